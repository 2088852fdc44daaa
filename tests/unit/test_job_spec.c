/* Job spec (engine/job_spec.c): a full spec and a minimal one, each field's validation with a
 * message naming its path, path resolution, loading from a file, the round trip through
 * job_spec_to_json, and seeded mutations that must never crash. */
#include <criterion/criterion.h>

#include <cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "job_spec.h"
#include "planner.h"
#include "test_util.h"

/* DESIGN.md section 4's example with every other field set to a non-default value too. */
static const char *k_full =
    "{\n"
    "  \"name\": \"wordnet-sherl\",\n"
    "  \"backbone\": \"models/all-MiniLM-L6-v2\",\n"
    "  \"method\": \"sherl\",\n"
    "  \"sherl\": {\"late_layers\": 2, \"downsample_factor\": 4, \"side_dim\": 96,\n"
    "            \"taps\": [0, 2, 4], \"dropout\": 0.2, \"tune_late\": true},\n"
    "  \"task\": {\"type\": \"classification\", \"pooling\": \"cls\",\n"
    "           \"text_fields\": [\"text_a\", \"text_b\"], \"label_field\": \"gold\"},\n"
    "  \"data\": {\"train\": \"train.jsonl\", \"validation\": \"val.jsonl\",\n"
    "           \"test\": \"/abs/test.jsonl\", \"max_length\": 64},\n"
    "  \"optim\": {\"lr\": 3e-3, \"weight_decay\": 0.05, \"warmup_ratio\": 0.1,\n"
    "            \"schedule\": \"cosine\", \"clip_norm\": 0.5, \"beta1\": 0.8, \"beta2\": 0.99,\n"
    "            \"eps\": 1e-6},\n"
    "  \"train\": {\"epochs\": 5, \"max_steps\": 1000, \"batch_size\": 16, \"grad_accum\": 2,\n"
    "            \"eval_every\": 200, \"checkpoint_every\": 500, \"seed\": 1234,\n"
    "            \"log_every\": 5},\n"
    "  \"resources\": {\"device\": \"cuda\", \"precision\": \"bf16\", \"ranks\": 2, \"threads\": 4,\n"
    "                \"graphs\": true},\n"
    "  \"output\": \"runs/wordnet-sherl\"\n"
    "}\n";

static const char *k_min = "{\"backbone\": \"m\", \"data\": {\"train\": \"t.jsonl\"}}";

#define LABEL "job.json"

static sherl_status parse(job_spec *s, const char *text, const char *base)
{
    return job_spec_parse(s, text, strlen(text), LABEL, base);
}

/* k_full with the field at dotted `path` ("optim.lr") replaced by the JSON text `value`
 * (NULL: removed). free() the result. */
static char *variant_of(const char *base_text, const char *path, const char *value)
{
    cJSON *root = cJSON_Parse(base_text);
    cr_assert_not_null(root);
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    cJSON *obj = root;
    char *key = buf, *dot;
    while ((dot = strchr(key, '.'))) {
        *dot = '\0';
        cJSON *next = cJSON_GetObjectItemCaseSensitive(obj, key);
        if (!cJSON_IsObject(next)) {
            next = cJSON_CreateObject();
            cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
            cJSON_AddItemToObject(obj, key, next);
        }
        obj = next;
        key = dot + 1;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    if (value) {
        /* checked, then inserted verbatim: cJSON_Print would round big integers and print
         * overflowing numbers as null */
        cJSON *v = cJSON_Parse(value);
        cr_assert_not_null(v, "bad test value %s", value);
        cJSON_Delete(v);
        cJSON_AddItemToObject(obj, key, cJSON_CreateRaw(value));
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    cr_assert_not_null(text);
    return text;
}

static char *variant(const char *path, const char *value)
{
    return variant_of(k_full, path, value);
}

/* Field-by-field equality, then the bytes (padding and string tails included). */
static void assert_same(const job_spec *a, const job_spec *b)
{
    cr_assert_str_eq(a->name, b->name);
    cr_assert_str_eq(a->backbone, b->backbone);
    cr_assert_eq(a->model.method, b->model.method);
    cr_assert_eq(a->model.late_layers, b->model.late_layers);
    cr_assert_eq(a->model.side_dim, b->model.side_dim);
    cr_assert_eq(a->model.downsample_factor, b->model.downsample_factor);
    cr_assert_eq(a->model.n_taps, b->model.n_taps);
    for (int i = 0; i < a->model.n_taps; i++)
        cr_assert_eq(a->model.taps[i], b->model.taps[i]);
    cr_assert_eq(a->model.dropout, b->model.dropout);
    cr_assert_eq(a->model.tune_late, b->model.tune_late);
    cr_assert_eq(a->model.task, b->model.task);
    cr_assert_eq(a->model.num_labels, b->model.num_labels);
    cr_assert_eq(a->model.pooling, b->model.pooling);
    cr_assert_eq(a->model.seed, b->model.seed);
    cr_assert_eq(a->n_text_fields, b->n_text_fields);
    for (int i = 0; i < a->n_text_fields; i++)
        cr_assert_str_eq(a->text_fields[i], b->text_fields[i]);
    cr_assert_str_eq(a->label_field, b->label_field);
    cr_assert_str_eq(a->train, b->train);
    cr_assert_str_eq(a->validation, b->validation);
    cr_assert_str_eq(a->test, b->test);
    cr_assert_eq(a->max_length, b->max_length);
    cr_assert_eq(a->lr, b->lr);
    cr_assert_eq(a->weight_decay, b->weight_decay);
    cr_assert_eq(a->warmup_ratio, b->warmup_ratio);
    cr_assert_eq(a->clip_norm, b->clip_norm);
    cr_assert_eq(a->beta1, b->beta1);
    cr_assert_eq(a->beta2, b->beta2);
    cr_assert_eq(a->eps, b->eps);
    cr_assert_eq(a->schedule, b->schedule);
    cr_assert_eq(a->epochs, b->epochs);
    cr_assert_eq(a->max_steps, b->max_steps);
    cr_assert_eq(a->batch_size, b->batch_size);
    cr_assert_eq(a->grad_accum, b->grad_accum);
    cr_assert_eq(a->eval_every_steps, b->eval_every_steps);
    cr_assert_eq(a->checkpoint_every, b->checkpoint_every);
    cr_assert_eq(a->log_every, b->log_every);
    cr_assert_eq(a->seed, b->seed);
    cr_assert_str_eq(a->device, b->device);
    cr_assert_str_eq(a->precision, b->precision);
    cr_assert_eq(a->ranks, b->ranks);
    cr_assert_eq(a->graphs, b->graphs);
    cr_assert_eq(a->threads, b->threads);
    cr_assert_str_eq(a->output, b->output);
    cr_assert(memcmp(a, b, sizeof *a) == 0, "structs differ in their bytes");
}

/* The spec must parse, and job_spec_to_json's text must parse back (base_dir NULL) into the
 * identical struct and print the identical text. */
static void round_trip(const job_spec *s)
{
    char *text = job_spec_to_json(s);
    cr_assert_not_null(text);
    job_spec *back = malloc(sizeof *back);
    cr_assert_not_null(back);
    sherl_status st = parse(back, text, NULL);
    cr_assert_eq(st.code, SHERL_OK, "%s\n%s", st.msg, text);
    assert_same(s, back);
    char *again = job_spec_to_json(back);
    cr_assert_not_null(again);
    cr_assert_str_eq(text, again);
    free(again);
    free(back);
    free(text);
}

/* Expect an error (SHERL_EFORMAT or SHERL_EINVAL) whose message starts with the label and
 * contains each given string; the spec must be left at its defaults. */
static void expect_err_(const char *text, size_t len, const char *const *want)
{
    job_spec *s = malloc(sizeof *s), *def = malloc(sizeof *def);
    cr_assert(s && def);
    sherl_status st = job_spec_parse(s, text, len, LABEL, "/base");
    cr_assert(st.code == SHERL_EFORMAT || st.code == SHERL_EINVAL,
              "expected an error, got %s: %s\n%s", sherl_code_name(st.code), st.msg, text);
    cr_assert(strncmp(st.msg, LABEL ": ", strlen(LABEL) + 2) == 0, "message lacks the label: %s",
              st.msg);
    for (int i = 0; want[i]; i++)
        cr_assert(strstr(st.msg, want[i]), "message '%s' lacks '%s'\n%s", st.msg, want[i], text);
    job_spec_default(def);
    cr_assert(memcmp(s, def, sizeof *s) == 0, "spec not reset to defaults after an error");
    free(s);
    free(def);
}
#define expect_err(text, ...) \
    expect_err_(text, strlen(text), (const char *const[]){__VA_ARGS__, NULL})

/* k_full with one field replaced (or removed) must fail naming it. */
static void expect_field_(const char *path, const char *value, const char *const *want)
{
    char *text = variant(path, value);
    char quoted[160];
    snprintf(quoted, sizeof quoted, "'%s'", path);
    expect_err_(text, strlen(text), (const char *const[]){quoted, NULL});
    expect_err_(text, strlen(text), want);
    free(text);
}
#define expect_field(path, value, ...) \
    expect_field_(path, value, (const char *const[]){__VA_ARGS__, NULL})

/* ------------------------------------------------------------------------------------------ */

Test(job_spec, full_spec)
{
    job_spec s;
    sherl_status st = parse(&s, k_full, "/base/dir");
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_str_eq(s.name, "wordnet-sherl");
    cr_assert_str_eq(s.backbone, "/base/dir/models/all-MiniLM-L6-v2");
    cr_assert_eq(s.model.method, METHOD_SHERL);
    cr_assert_eq(s.model.late_layers, 2);
    cr_assert_eq(s.model.downsample_factor, 4);
    cr_assert_eq(s.model.side_dim, 96);
    cr_assert_eq(s.model.n_taps, 3);
    cr_assert_eq(s.model.taps[0], 0);
    cr_assert_eq(s.model.taps[1], 2);
    cr_assert_eq(s.model.taps[2], 4);
    cr_assert_eq(s.model.dropout, 0.2f);
    cr_assert_eq(s.model.tune_late, 1);
    cr_assert_eq(s.model.task, TASK_CLASSIFICATION);
    cr_assert_eq(s.model.pooling, POOL_CLS);
    cr_assert_eq(s.model.seed, 1234u);
    cr_assert_eq(s.model.num_labels, 2); /* left at the default: set from the data later */
    cr_assert_eq(s.n_text_fields, 2);
    cr_assert_str_eq(s.text_fields[0], "text_a");
    cr_assert_str_eq(s.text_fields[1], "text_b");
    cr_assert_str_eq(s.label_field, "gold");
    cr_assert_str_eq(s.train, "/base/dir/train.jsonl");
    cr_assert_str_eq(s.validation, "/base/dir/val.jsonl");
    cr_assert_str_eq(s.test, "/abs/test.jsonl");
    cr_assert_eq(s.max_length, 64);
    cr_assert_eq(s.lr, 3e-3f);
    cr_assert_eq(s.weight_decay, 0.05f);
    cr_assert_eq(s.warmup_ratio, 0.1f);
    cr_assert_eq(s.schedule, SCHEDULE_COSINE);
    cr_assert_eq(s.clip_norm, 0.5f);
    cr_assert_eq(s.beta1, 0.8f);
    cr_assert_eq(s.beta2, 0.99f);
    cr_assert_eq(s.eps, 1e-6f);
    cr_assert_eq(s.epochs, 5);
    cr_assert_eq(s.max_steps, 1000);
    cr_assert_eq(s.batch_size, 16);
    cr_assert_eq(s.grad_accum, 2);
    cr_assert_eq(s.eval_every_steps, 200);
    cr_assert_eq(s.checkpoint_every, 500);
    cr_assert_eq(s.seed, 1234u);
    cr_assert_eq(s.log_every, 5);
    cr_assert_str_eq(s.device, "cuda");
    cr_assert_str_eq(s.precision, "bf16");
    cr_assert_eq(s.ranks, 2);
    cr_assert_eq(s.graphs, 1);
    cr_assert_eq(s.threads, 4);
    cr_assert_str_eq(s.output, "/base/dir/runs/wordnet-sherl");
}

Test(job_spec, design_example_verbatim)
{
    static const char *ex =
        "{\n"
        "  \"name\": \"wordnet-sherl\",\n"
        "  \"backbone\": \"models/all-MiniLM-L6-v2\",\n"
        "  \"method\": \"sherl\",\n"
        "  \"sherl\": {\"late_layers\": 1, \"downsample_factor\": 2, \"dropout\": 0.1, "
        "\"tune_late\": false},\n"
        "  \"task\": {\"type\": \"classification\", \"pooling\": \"mean\", \"text_fields\": "
        "[\"text\"], \"label_field\": \"label\"},\n"
        "  \"data\": {\"train\": \"train.jsonl\", \"validation\": \"val.jsonl\", \"test\": "
        "\"test.jsonl\", \"max_length\": 64},\n"
        "  \"optim\": {\"lr\": 5e-4, \"weight_decay\": 0.01, \"warmup_ratio\": 0.06, "
        "\"schedule\": \"linear\", \"clip_norm\": 1.0},\n"
        "  \"train\": {\"epochs\": 3, \"batch_size\": 32, \"grad_accum\": 1, \"eval_every\": "
        "\"epoch\", \"seed\": 17},\n"
        "  \"resources\": {\"device\": \"cpu\", \"precision\": \"fp32\", \"ranks\": 1, "
        "\"threads\": 2},\n"
        "  \"output\": \"runs/wordnet-sherl\"\n"
        "}\n";
    job_spec s, d;
    sherl_status st = parse(&s, ex, NULL);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_str_eq(s.name, "wordnet-sherl");
    cr_assert_str_eq(s.backbone, "models/all-MiniLM-L6-v2");
    cr_assert_str_eq(s.train, "train.jsonl");
    cr_assert_str_eq(s.validation, "val.jsonl");
    cr_assert_str_eq(s.test, "test.jsonl");
    cr_assert_str_eq(s.output, "runs/wordnet-sherl");
    cr_assert_eq(s.max_length, 64);
    cr_assert_eq(s.threads, 2);
    cr_assert_eq(s.eval_every_steps, 0);
    /* everything else is the default */
    job_spec_default(&d);
    cr_assert_eq(s.model.late_layers, d.model.late_layers);
    cr_assert_eq(s.model.dropout, d.model.dropout);
    cr_assert_eq(s.lr, d.lr);
    cr_assert_eq(s.weight_decay, d.weight_decay);
    cr_assert_eq(s.warmup_ratio, d.warmup_ratio);
    cr_assert_eq(s.clip_norm, d.clip_norm);
    cr_assert_eq(s.model.n_taps, 0);
    round_trip(&s);
}

Test(job_spec, minimal_spec_gets_every_default)
{
    job_spec s;
    sherl_status st = parse(&s, k_min, NULL);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_str_eq(s.name, "job");
    cr_assert_str_eq(s.backbone, "m");
    cr_assert_eq(s.model.method, METHOD_SHERL);
    cr_assert_eq(s.model.late_layers, 1);
    cr_assert_eq(s.model.downsample_factor, 2);
    cr_assert_eq(s.model.side_dim, 0);
    cr_assert_eq(s.model.n_taps, 0);
    cr_assert_eq(s.model.dropout, 0.1f);
    cr_assert_eq(s.model.tune_late, 0);
    cr_assert_eq(s.model.task, TASK_CLASSIFICATION);
    cr_assert_eq(s.model.pooling, POOL_MEAN);
    cr_assert_eq(s.model.num_labels, 2);
    cr_assert_eq(s.model.seed, 17u);
    cr_assert_eq(s.n_text_fields, 1);
    cr_assert_str_eq(s.text_fields[0], "text");
    cr_assert_str_eq(s.label_field, "label");
    cr_assert_str_eq(s.train, "t.jsonl");
    cr_assert_str_eq(s.validation, "");
    cr_assert_str_eq(s.test, "");
    cr_assert_eq(s.max_length, 128);
    cr_assert_eq(s.lr, 5e-4f);
    cr_assert_eq(s.weight_decay, 0.01f);
    cr_assert_eq(s.warmup_ratio, 0.06f);
    cr_assert_eq(s.schedule, SCHEDULE_LINEAR);
    cr_assert_eq(s.clip_norm, 1.0f);
    cr_assert_eq(s.beta1, 0.9f);
    cr_assert_eq(s.beta2, 0.999f);
    cr_assert_eq(s.eps, 1e-8f);
    cr_assert_eq(s.epochs, 3);
    cr_assert_eq(s.max_steps, 0);
    cr_assert_eq(s.batch_size, 32);
    cr_assert_eq(s.grad_accum, 1);
    cr_assert_eq(s.eval_every_steps, 0);
    cr_assert_eq(s.checkpoint_every, 0);
    cr_assert_eq(s.seed, 17u);
    cr_assert_eq(s.log_every, 10);
    cr_assert_str_eq(s.device, "cpu");
    cr_assert_str_eq(s.precision, "fp32");
    cr_assert_eq(s.ranks, 1);
    cr_assert_eq(s.graphs, 0, "graphs default to off");
    cr_assert_eq(s.threads, 0);
    cr_assert_str_eq(s.output, "runs/job");

    /* The same struct as job_spec_default with the two required paths set. */
    job_spec d;
    job_spec_default(&d);
    memcpy(d.backbone, "m", 2);
    memcpy(d.train, "t.jsonl", 8);
    assert_same(&s, &d);

    /* null means "not given": the default applies */
    static const char *nulls =
        "{\"backbone\": \"m\", \"data\": {\"train\": \"t.jsonl\", \"validation\": null},"
        " \"name\": null, \"sherl\": null, \"optim\": {\"lr\": null}, \"output\": null}";
    st = parse(&s, nulls, NULL);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    assert_same(&s, &d);
}

Test(job_spec, accepted_variants)
{
    job_spec s;
    struct {
        const char *path, *value;
    } ok[] = {
        {"method", "\"full\""},          {"method", "\"late\""},
        {"method", "\"linear\""},        {"task.type", "\"regression\""},
        {"task.pooling", "\"mean\""},    {"task.text_fields", "[\"sentence\"]"},
        {"optim.schedule", "\"linear\""}, {"optim.schedule", "\"constant\""},
        {"optim.lr", "1"},               {"optim.eps", "1e-2"},
        {"optim.clip_norm", "0"},        {"optim.weight_decay", "0"},
        {"optim.beta1", "0"},            {"train.epochs", "10000"},
        {"train.epochs", "3.0"},         {"train.epochs", "1e1"},
        {"train.batch_size", "65536"},   {"train.grad_accum", "4096"},
        {"train.eval_every", "\"epoch\""}, {"train.eval_every", "1"},
        {"train.seed", "0"},             {"train.seed", "9007199254740992"},
        {"data.max_length", "3"},        {"data.max_length", "8192"},
        {"resources.threads", "0"},      {"resources.threads", "1024"},
        {"resources.ranks", "4096"},     {"sherl.taps", "[0, 1]"},
        {"sherl.dropout", "0"},          {"name", "\"A.b_c-9\""},
        {"resources.precision", "\"fp32\""},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char *text = variant(ok[i].path, ok[i].value);
        sherl_status st = parse(&s, text, "/b");
        cr_assert_eq(st.code, SHERL_OK, "%s = %s: %s", ok[i].path, ok[i].value, st.msg);
        round_trip(&s);
        free(text);
    }
    char *text = variant("train.seed", "9007199254740992");
    cr_assert_eq(parse(&s, text, NULL).code, SHERL_OK);
    cr_assert_eq(s.seed, 9007199254740992ull);
    cr_assert_eq(s.model.seed, 9007199254740992ull);
    free(text);

    /* The sherl object is accepted with every method; late_layers applies to "late". */
    text = variant("method", "\"late\"");
    cr_assert_eq(parse(&s, text, NULL).code, SHERL_OK);
    cr_assert_eq(s.model.method, METHOD_LATE);
    cr_assert_eq(s.model.late_layers, 2);
    free(text);
}

Test(job_spec, invalid_optim)
{
    expect_field("optim.lr", "-0.1", "job.json: field 'optim.lr' is -0.1, expected a number in (0, 1]");
    expect_field("optim.lr", "0", "(0, 1]");
    expect_field("optim.lr", "1.5", "1.5");
    expect_field("optim.lr", "1e-50", "(0, 1]"); /* positive, but 0 as a float */
    expect_field("optim.lr", "1e999", "'optim.lr' is inf", "(0, 1]"); /* overflows to inf */
    expect_field("optim.lr", "\"0.1\"", "the string \"0.1\"");
    expect_field("optim.lr", "true", "is true");
    expect_field("optim.weight_decay", "1", "[0, 1)");
    expect_field("optim.weight_decay", "-0.01", "[0, 1)");
    expect_field("optim.weight_decay", "0.99999999", "[0, 1)"); /* 1 as a float */
    expect_field("optim.warmup_ratio", "1", "[0, 1)");
    expect_field("optim.clip_norm", "-1", ">= 0");
    expect_field("optim.clip_norm", "1e300", ">= 0"); /* inf as a float */
    expect_field("optim.beta1", "1", "[0, 1)");
    expect_field("optim.beta2", "-0.5", "[0, 1)");
    expect_field("optim.eps", "0", "(0, 0.01]");
    expect_field("optim.eps", "0.1", "(0, 0.01]");
    expect_field("optim.schedule", "\"step\"", "\"linear\", \"cosine\", \"constant\"");
    expect_field("optim.schedule", "1", "is 1");
    expect_field("optim", "[]", "expected an object");
    expect_field("optim.lrr", "0.1", "unknown field", "allowed in 'optim'", "lr, weight_decay");
}

Test(job_spec, invalid_train)
{
    expect_field("train.epochs", "0", "[1, 10000]");
    expect_field("train.epochs", "10001", "[1, 10000]");
    expect_field("train.epochs", "2.5", "2.5");
    expect_field("train.epochs", "\"3\"", "the string");
    expect_field("train.max_steps", "-1", ">= 0");
    expect_field("train.batch_size", "0", "job.json: field 'train.batch_size' is 0, expected an integer in [1, 65536]");
    expect_field("train.batch_size", "65537", "[1, 65536]");
    expect_field("train.grad_accum", "0", "[1, 4096]");
    expect_field("train.grad_accum", "4097", "[1, 4096]");
    expect_field("train.eval_every", "\"step\"", "\"epoch\" or a number of steps");
    expect_field("train.eval_every", "0", "\"epoch\"");
    expect_field("train.eval_every", "-5", "\"epoch\"");
    expect_field("train.eval_every", "true", "\"epoch\"");
    expect_field("train.checkpoint_every", "-1", ">= 0");
    expect_field("train.seed", "-1", "2^53");
    expect_field("train.seed", "0.5", "2^53");
    expect_field("train.seed", "1e300", "2^53");
    expect_field("train.seed", "9007199254740994", "2^53");
    expect_field("train.log_every", "0", ">= 1");
    expect_field("train.lr", "0.1", "unknown field", "allowed in 'train'", "epochs");
    expect_field("train", "3", "expected an object");
}

Test(job_spec, invalid_data)
{
    expect_field("data.train", NULL, "missing", "required");
    expect_field("data.train", "null", "missing");
    expect_field("data.train", "\"\"", "non-empty path");
    expect_field("data.train", "5", "is 5");
    expect_field("data.validation", "\"\"", "non-empty path");
    expect_field("data.test", "[]", "an array");
    expect_field("data.max_length", "2", "[3, 8192]");
    expect_field("data.max_length", "8193", "[3, 8192]");
    expect_field("data.dev", "\"x\"", "unknown field", "allowed in 'data'", "validation");
    expect_field("data", "\"x\"", "expected an object");
    expect_err("{\"backbone\": \"m\"}", "'data.train'", "missing");
}

Test(job_spec, invalid_sherl)
{
    expect_field("sherl.late_layers", "0", ">= 1");
    expect_field("sherl.downsample_factor", "0", ">= 1");
    expect_field("sherl.side_dim", "-1", ">= 0");
    expect_field("sherl.dropout", "1", "[0, 1)");
    expect_field("sherl.dropout", "-0.1", "[0, 1)");
    expect_field("sherl.tune_late", "\"yes\"", "true or false");
    expect_field("sherl.taps", "\"0,1\"", "an array of 2 to 256");
    expect_field("sherl.taps", "[0]", "has 1 entries");
    expect_field("sherl.taps", "[]", "has 0 entries");
    /* not increasing: the entry is named */
    char *t = variant("sherl.taps", "[0, 2, 2]");
    expect_err_(t, strlen(t), (const char *const[]){"'sherl.taps[2]'", "taps must increase", NULL});
    free(t);
    t = variant("sherl.taps", "[3, 1]");
    expect_err_(t, strlen(t), (const char *const[]){"'sherl.taps[1]' is 1", NULL});
    free(t);
    t = variant("sherl.taps", "[0, -1]");
    expect_err_(t, strlen(t), (const char *const[]){"'sherl.taps[1]' is -1", ">= 0", NULL});
    free(t);
    t = variant("sherl.taps", "[0, 1.5]");
    expect_err_(t, strlen(t), (const char *const[]){"'sherl.taps[1]' is 1.5", NULL});
    free(t);
    /* more than SHERL_MAX_TAPS */
    char big[8 * (SHERL_MAX_TAPS + 2)];
    size_t n = (size_t)sprintf(big, "[");
    for (int i = 0; i <= SHERL_MAX_TAPS; i++)
        n += (size_t)sprintf(big + n, "%s%d", i ? "," : "", i);
    sprintf(big + n, "]");
    t = variant("sherl.taps", big);
    expect_err_(t, strlen(t), (const char *const[]){"'sherl.taps'", "more than 256", NULL});
    free(t);
    expect_field("sherl.tap", "[0, 1]", "unknown field", "allowed in 'sherl'", "taps");
    expect_field("sherl", "1", "expected an object");
}

Test(job_spec, invalid_task)
{
    expect_field("task.type", "\"ranking\"", "\"classification\", \"regression\"");
    expect_field("task.pooling", "\"max\"", "\"mean\", \"cls\"");
    expect_field("task.text_fields", "[]", "1 or 2 non-empty strings");
    expect_field("task.text_fields", "[\"a\", \"b\", \"c\"]", "1 or 2");
    expect_field("task.text_fields", "\"text\"", "1 or 2");
    char *t = variant("task.text_fields", "[\"a\", \"\"]");
    expect_err_(t, strlen(t), (const char *const[]){"'task.text_fields[1]'", "non-empty", NULL});
    free(t);
    t = variant("task.text_fields", "[1]");
    expect_err_(t, strlen(t), (const char *const[]){"'task.text_fields[0]' is 1", NULL});
    free(t);
    char long_field[80];
    snprintf(long_field, sizeof long_field, "[\"%064d\"]", 0);
    t = variant("task.text_fields", long_field);
    expect_err_(t, strlen(t), (const char *const[]){"'task.text_fields[0]'", "at most 63", NULL});
    free(t);
    expect_field("task.label_field", "\"\"", "non-empty");
    expect_field("task.label_field", "false", "non-empty");
    expect_field("task.labels", "[]", "unknown field", "allowed in 'task'", "label_field");
}

Test(job_spec, invalid_resources)
{
    expect_field("resources.device", "\"tpu\"",
                 "one of \"cpu\", \"cuda\" (any GPU), \"cuda:N\" (GPU N, 0..15) or \"auto\"");
    expect_field("resources.device", "\"cuda:16\"", "'resources.device' is the string \"cuda:16\"",
                 "\"cuda:N\" (GPU N, 0..15)");
    expect_field("resources.device", "\"cuda:01\"", "\"cuda:N\"");
    expect_field("resources.device", "\"cuda:\"", "\"cuda:N\"");
    expect_field("resources.device", "\"cuda:-1\"", "\"cuda:N\"");
    expect_field("resources.device", "\"cuda1\"", "\"cuda:N\"");
    expect_field("resources.device", "0", "'resources.device' is 0", "\"cuda:N\"");
    expect_field("resources.precision", "\"fp8\"", "\"fp32\", \"bf16\", \"fp16\"");
    /* bf16 is accepted on every device, and reaches the model options */
    job_spec s;
    char *t = variant_of(k_full, "resources.device", "\"cpu\"");
    cr_assert_eq(parse(&s, t, NULL).code, SHERL_OK);
    cr_assert_eq(s.model.precision, SHERL_BF16);
    free(t);
    t = variant_of(k_full, "resources.precision", "\"fp32\"");
    cr_assert_eq(parse(&s, t, NULL).code, SHERL_OK);
    cr_assert_eq(s.model.precision, SHERL_FP32);
    free(t);
    expect_field("resources.ranks", "0", "[1, 4096]");
    expect_field("resources.ranks", "4097", "[1, 4096]");
    expect_field("resources.threads", "-1", "[0, 1024]");
    expect_field("resources.threads", "1025", "[0, 1024]");
    expect_field("resources.graphs", "1", "true or false");
    expect_field("resources.gpus", "1", "unknown field", "allowed in 'resources'", "ranks");
}

Test(job_spec, invalid_top_level)
{
    expect_field("method", "\"lora\"", "'method' is the string \"lora\"", "\"sherl\", \"full\"");
    expect_field("method", "3", "'method' is 3");
    expect_field("name", "\"a/b\"", "'name' is the string \"a/b\"", "A-Z a-z 0-9");
    expect_field("name", "\"\"", "'name'");
    expect_field("name", "\"..\"", "'name'");
    expect_field("name", "\"a b\"", "'name'");
    expect_field("name", "7", "'name' is 7");
    char long_name[140];
    snprintf(long_name, sizeof long_name, "\"%0128d\"", 0);
    expect_field("name", long_name, "'name'");
    expect_field("backbone", NULL, "'backbone' is missing", "required");
    expect_field("backbone", "\"\"", "non-empty path");
    expect_field("backbone", "{}", "an object");
    expect_field("output", "\"\"", "non-empty path");
    expect_field("epochs", "3", "unknown field 'epochs'", "allowed at the top level",
                 "name, backbone, method");
    expect_err("{\"backbone\": \"m\", \"data\": {\"train\": \"t\"}, \"backbone\": \"n\"}",
               "'backbone' appears more than once");
    expect_err("{\"backbone\": \"m\", \"data\": {\"train\": \"t\"}, "
               "\"optim\": {\"lr\": 0.1, \"lr\": 0.2}}",
               "'optim.lr' appears more than once");
}

Test(job_spec, malformed_json)
{
    expect_err("", "not valid JSON");
    expect_err("{\"backbone\": \"m\"", "not valid JSON");
    expect_err("{\"backbone\": \"m\",}", "not valid JSON");
    expect_err("{\"backbone\": \"m\"} x", "unexpected data");
    expect_err("[]", "not a JSON object");
    expect_err("null", "not a JSON object");
    expect_err("\"job\"", "not a JSON object");
    static const char with_nul[] = "{\"backbone\": \"m\0\"}";
    expect_err_(with_nul, sizeof with_nul - 1, (const char *const[]){"NUL byte", NULL});
    char *deep = nested_json(5000);
    expect_err(deep, "deeper");
    free(deep);
    /* over the size bound, even if it is only white space around a valid spec */
    size_t n = JOB_SPEC_MAX_BYTES + 1;
    char *big = malloc(n + 1);
    cr_assert_not_null(big);
    memset(big, ' ', n);
    memcpy(big, k_min, strlen(k_min));
    big[n] = '\0';
    expect_err_(big, n, (const char *const[]){"too large", NULL});
    free(big);

    /* NULL arguments */
    job_spec s;
    cr_assert_eq(job_spec_parse(NULL, k_min, strlen(k_min), LABEL, NULL).code, SHERL_EINVAL);
    cr_assert_eq(job_spec_parse(&s, NULL, 3, LABEL, NULL).code, SHERL_EINVAL);
    cr_assert_eq(job_spec_load(&s, NULL).code, SHERL_EINVAL);
    cr_assert_eq(job_spec_load(NULL, "x").code, SHERL_EINVAL);
    cr_assert_null(job_spec_to_json(NULL));
    /* no label: a generic one */
    sherl_status st = job_spec_parse(&s, "[]", 2, NULL, NULL);
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert(strncmp(st.msg, "job spec: ", 10) == 0, "%s", st.msg);
}

Test(job_spec, relative_paths_resolve_against_base_dir)
{
    job_spec s;
    /* trailing slash on the base: one separator */
    cr_assert_eq(parse(&s, k_full, "/data/jobs/").code, SHERL_OK);
    cr_assert_str_eq(s.backbone, "/data/jobs/models/all-MiniLM-L6-v2");
    cr_assert_str_eq(s.train, "/data/jobs/train.jsonl");
    cr_assert_str_eq(s.validation, "/data/jobs/val.jsonl");
    cr_assert_str_eq(s.test, "/abs/test.jsonl");
    cr_assert_str_eq(s.output, "/data/jobs/runs/wordnet-sherl");
    /* a relative base stays relative */
    cr_assert_eq(parse(&s, k_full, "specs").code, SHERL_OK);
    cr_assert_str_eq(s.train, "specs/train.jsonl");
    /* no base, or an empty one: as written */
    cr_assert_eq(parse(&s, k_full, "").code, SHERL_OK);
    cr_assert_str_eq(s.train, "train.jsonl");
    /* the default output follows the name and the base */
    char *t = variant("output", NULL);
    cr_assert_eq(parse(&s, t, "/data").code, SHERL_OK);
    cr_assert_str_eq(s.output, "/data/runs/wordnet-sherl");
    cr_assert_eq(parse(&s, k_min, "/data").code, SHERL_OK);
    cr_assert_str_eq(s.output, "/data/runs/job");
    cr_assert_str_eq(s.backbone, "/data/m");
    /* absolute output unchanged */
    free(t);
    t = variant("output", "\"/srv/out\"");
    cr_assert_eq(parse(&s, t, "/data").code, SHERL_OK);
    cr_assert_str_eq(s.output, "/srv/out");
    free(t);

    /* too long: an error naming the field, never a truncation */
    char *longp = malloc(JOB_PATH_MAX + 8);
    cr_assert_not_null(longp);
    memset(longp, 'a', JOB_PATH_MAX + 7);
    longp[0] = '"';
    longp[JOB_PATH_MAX] = '"'; /* JOB_PATH_MAX - 1 characters: fits only without a base */
    longp[JOB_PATH_MAX + 1] = '\0';
    t = variant("data.train", longp);
    cr_assert_eq(parse(&s, t, NULL).code, SHERL_OK);
    cr_assert_eq(strlen(s.train), JOB_PATH_MAX - 1);
    sherl_status st = parse(&s, t, "/b");
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert(strstr(st.msg, "'data.train'") && strstr(st.msg, "at most 4095 bytes"), "%s",
              st.msg);
    free(t);
    longp[JOB_PATH_MAX] = 'a';
    longp[JOB_PATH_MAX + 1] = '"';
    longp[JOB_PATH_MAX + 2] = '\0';
    t = variant("backbone", longp);
    st = parse(&s, t, NULL);
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert(strstr(st.msg, "'backbone'"), "%s", st.msg);
    free(t);
    /* a base so long that the default output cannot fit */
    memset(longp, 'b', JOB_PATH_MAX - 4);
    longp[0] = '/';
    longp[JOB_PATH_MAX - 4] = '\0';
    st = parse(&s, "{\"backbone\": \"/m\", \"data\": {\"train\": \"/t\"}}", longp);
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert(strstr(st.msg, "'output'"), "%s", st.msg);
    free(longp);
}

static void make_dir(const char *path)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        cr_assert_fail("mkdir %s: %s", path, strerror(errno));
}

Test(job_spec, load_from_file)
{
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/job_spec", SHERL_TEST_WORK);
    make_dir(dir);
    snprintf(path, sizeof path, "%s/job.json", dir);
    write_file(path, k_full, strlen(k_full));

    job_spec s;
    sherl_status st = job_spec_load(&s, path);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    char want[1200];
    snprintf(want, sizeof want, "%s/train.jsonl", dir);
    cr_assert_str_eq(s.train, want);
    snprintf(want, sizeof want, "%s/models/all-MiniLM-L6-v2", dir);
    cr_assert_str_eq(s.backbone, want);
    snprintf(want, sizeof want, "%s/runs/wordnet-sherl", dir);
    cr_assert_str_eq(s.output, want);
    cr_assert_str_eq(s.test, "/abs/test.jsonl");
    round_trip(&s);

    /* a relative spec path: resolved against the current directory, so absolute */
    cr_assert_eq(chdir(SHERL_TEST_WORK), 0);
    st = job_spec_load(&s, "job_spec/job.json");
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    snprintf(want, sizeof want, "%s/train.jsonl", dir);
    cr_assert_str_eq(s.train, want);
    cr_assert_eq(chdir(dir), 0);
    st = job_spec_load(&s, "job.json");
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_str_eq(s.train, want);
    st = job_spec_load(&s, "./job.json");
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_str_eq(s.train, want);

    /* errors name the file */
    snprintf(path, sizeof path, "%s/bad.json", dir);
    static const char bad[] = "{\"backbone\": \"m\", \"data\": {\"train\": \"t\"}, "
                              "\"optim\": {\"lr\": -0.1}}";
    write_file(path, bad, strlen(bad));
    st = job_spec_load(&s, path);
    cr_assert_eq(st.code, SHERL_EFORMAT);
    char prefix[1200];
    snprintf(prefix, sizeof prefix, "%s: field 'optim.lr' is -0.1", path);
    cr_assert(strncmp(st.msg, prefix, strlen(prefix)) == 0, "%s", st.msg);
    snprintf(path, sizeof path, "%s/missing.json", dir);
    st = job_spec_load(&s, path);
    cr_assert_eq(st.code, SHERL_EIO, "%s", st.msg);
    cr_assert(strstr(st.msg, "missing.json"), "%s", st.msg);
    st = job_spec_load(&s, dir);
    cr_assert_eq(st.code, SHERL_EIO, "%s", st.msg);

    /* over the size bound */
    snprintf(path, sizeof path, "%s/big.json", dir);
    size_t n = JOB_SPEC_MAX_BYTES + 10;
    char *big = malloc(n);
    cr_assert_not_null(big);
    memset(big, ' ', n);
    memcpy(big, k_min, strlen(k_min));
    write_file(path, big, n);
    free(big);
    st = job_spec_load(&s, path);
    cr_assert_eq(st.code, SHERL_EFORMAT, "%s", st.msg);
    cr_assert(strstr(st.msg, "too large"), "%s", st.msg);
}

Test(job_spec, round_trip_through_json)
{
    job_spec s;
    cr_assert_eq(parse(&s, k_full, "/base").code, SHERL_OK);
    round_trip(&s);
    /* the absolute paths it writes parse the same with any base */
    char *text = job_spec_to_json(&s);
    cr_assert_not_null(text);
    job_spec other;
    cr_assert_eq(parse(&other, text, "/elsewhere").code, SHERL_OK);
    assert_same(&s, &other);
    /* it writes every key, defaults included */
    cJSON *root = cJSON_Parse(text);
    cr_assert_not_null(root);
    cr_assert_not_null(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "optim"), "beta2"));
    cr_assert_not_null(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "train"), "log_every"));
    cJSON_Delete(root);
    free(text);

    cr_assert_eq(parse(&s, k_min, NULL).code, SHERL_OK);
    round_trip(&s);
    text = job_spec_to_json(&s);
    cr_assert_not_null(text);
    /* short numbers, unset optional paths as null, "epoch" for eval_every */
    cr_assert(strstr(text, "\"lr\":\t0.0005") && strstr(text, "\"eps\":\t1e-08"), "%s", text);
    cr_assert(strstr(text, "\"validation\":\tnull") && strstr(text, "\"taps\":\tnull"), "%s",
              text);
    cr_assert(strstr(text, "\"eval_every\":\t\"epoch\""), "%s", text);
    free(text);

    /* awkward floats survive exactly */
    static const char *const floats[][2] = {
        {"optim.lr", "0.1"},          {"optim.lr", "1.17549435e-38"}, {"optim.eps", "1e-45"},
        {"optim.beta2", "0.99999994"}, {"optim.clip_norm", "3.4e38"},  {"sherl.dropout", "0.3"},
        {"optim.warmup_ratio", "0.123456789"},
    };
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++) {
        char *t = variant(floats[i][0], floats[i][1]);
        sherl_status st = parse(&s, t, NULL);
        cr_assert_eq(st.code, SHERL_OK, "%s = %s: %s", floats[i][0], floats[i][1], st.msg);
        round_trip(&s);
        free(t);
    }
    /* a struct filled by hand (as the daemon's proto mapping would) */
    job_spec_default(&s);
    memcpy(s.backbone, "/m", 3);
    memcpy(s.train, "/t", 3);
    s.model.method = METHOD_LINEAR;
    s.model.n_taps = 2;
    s.model.taps[0] = 1;
    s.model.taps[1] = 5;
    s.lr = 0.7f;
    s.eval_every_steps = 7;
    s.seed = s.model.seed = 99;
    round_trip(&s);
}

/* xorshift64*: reproducible mutations. */
static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    return *x * 2685821657736338717ull;
}

/* Whatever the bytes, parsing returns a status; a spec that parses round-trips. */
static void check_any(const char *text, size_t len)
{
    job_spec *s = malloc(sizeof *s);
    cr_assert_not_null(s);
    sherl_status st = job_spec_parse(s, text, len, LABEL, "/b");
    if (st.code == SHERL_OK)
        round_trip(s);
    else
        cr_assert(st.msg[0], "an error without a message");
    free(s);
}

Test(job_spec, mutations_never_crash)
{
    size_t n = strlen(k_full);
    for (size_t i = 0; i <= n; i++) /* every truncation */
        check_any(k_full, i);
    static const char alphabet[] = "{}[]\",:.-+e0123456789 \\u/nt\x01\xff";
    char *buf = malloc(2 * n + 64);
    cr_assert_not_null(buf);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int iter = 0; iter < 4000; iter++) {
        size_t len = n;
        memcpy(buf, k_full, n);
        int edits = 1 + (int)(rng_next(&x) % 4);
        for (int e = 0; e < edits; e++) {
            size_t pos = (size_t)(rng_next(&x) % (len + 1));
            switch (rng_next(&x) % 4) {
            case 0: /* replace a byte */
                if (pos < len)
                    buf[pos] = alphabet[rng_next(&x) % (sizeof alphabet - 1)];
                break;
            case 1: /* insert a byte */
                if (len < 2 * n + 32) {
                    memmove(buf + pos + 1, buf + pos, len - pos);
                    buf[pos] = alphabet[rng_next(&x) % (sizeof alphabet - 1)];
                    len++;
                }
                break;
            case 2: { /* delete a range */
                size_t k = (size_t)(rng_next(&x) % 8);
                if (pos + k > len)
                    k = len - pos;
                memmove(buf + pos, buf + pos + k, len - pos - k);
                len -= k;
                break;
            }
            default: /* flip a bit */
                if (pos < len)
                    buf[pos] ^= (char)(1u << (rng_next(&x) % 8));
            }
        }
        check_any(buf, len);
    }
    free(buf);
}

/* The backend a spec's resources.device selects: cpu always; cuda only with a usable GPU, else
 * an error with the runtime's reason; auto whichever of the two there is. */
Test(job_spec, device_selects_backend)
{
    job_spec s;
    const sherl_backend *be = NULL, *gpu = sherl_backend_cuda();
    char *t = variant_of(k_min, "resources.device", "\"cpu\"");
    cr_assert_eq(parse(&s, t, NULL).code, SHERL_OK);
    cr_assert_eq(job_backend(&s, &be).code, SHERL_OK);
    cr_assert_eq(be, sherl_backend_cpu());
    free(t);
    t = variant_of(k_min, "resources.device", "\"auto\"");
    cr_assert_eq(parse(&s, t, NULL).code, SHERL_OK);
    cr_assert_eq(job_backend(&s, &be).code, SHERL_OK);
    cr_assert_eq(be, gpu ? gpu : sherl_backend_cpu());
    free(t);
    t = variant_of(k_min, "resources.device", "\"cuda\"");
    cr_assert_eq(parse(&s, t, NULL).code, SHERL_OK);
    sherl_status st = job_backend(&s, &be);
    if (gpu) {
        cr_assert_eq(st.code, SHERL_OK);
        cr_assert_eq(be, gpu);
    } else {
        char why[256];
        sherl_cuda_devices(NULL, 0, why, sizeof why);
        cr_assert_eq(st.code, SHERL_EUNSUPPORTED);
        cr_assert(strstr(st.msg, "no usable CUDA GPU"), "%s", st.msg);
        cr_assert(strstr(st.msg, why), "the reason '%s' is missing from: %s", why, st.msg);
    }
    free(t);
    /* one GPU by index: kept as written (and written back so), and selected when present */
    for (int i = 0; i < SHERL_CUDA_MAX_DEVICES; i += 5) {
        char value[32], name[16];
        snprintf(name, sizeof name, "cuda:%d", i);
        snprintf(value, sizeof value, "\"%s\"", name);
        t = variant_of(k_min, "resources.device", value);
        cr_assert_eq(parse(&s, t, NULL).code, SHERL_OK, "%s", name);
        cr_assert_str_eq(s.device, name);
        char *back = job_spec_to_json(&s);
        cr_assert(back && strstr(back, value), "%s not written back: %s", name, back);
        free(back);
        st = job_backend(&s, &be);
        const sherl_backend *want = sherl_backend_cuda_device(i);
        if (want) {
            cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
            cr_assert_eq(be, want);
            cr_assert_eq(be->device, i);
        } else {
            cr_assert_eq(st.code, SHERL_EUNSUPPORTED, "%s: %s", name, st.msg);
            cr_assert(strstr(st.msg, "resources.device") && strstr(st.msg, name), "%s", st.msg);
            cr_assert(strstr(st.msg, gpu ? "no usable GPU" : "no usable CUDA GPU"), "%s", st.msg);
        }
        free(t);
    }
}
