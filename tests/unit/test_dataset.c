/* Tests of the dataset readers (engine/dataset.c): JSONL and GLUE-style TSV loading with the
 * real all-MiniLM-L6-v2 tokenizer, label maps, regression targets, every error case (status,
 * file, line and reason), padded batches and the seeded shuffle. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dataset.h"
#include "test_util.h"
#include "tokenizer.h"

/* ---------------------------------------------------------------------------------- */
/* helpers                                                                              */

static wordpiece_tokenizer *tok;

static void load_tok(void)
{
    char vocab[1024];
    minilm_file(vocab, sizeof vocab, "vocab.txt");
    sherl_status st = wordpiece_load(&tok, SHERL_MINILM_DIR);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
}

static void free_tok(void)
{
    wordpiece_free(tok);
    tok = NULL;
}

TestSuite(dataset, .init = load_tok, .fini = free_tok);

/* Writes `text` (len bytes; -1: strlen) to SHERL_TEST_WORK/dataset_<name>; its path in out. */
static void put(char *out, size_t cap, const char *name, const char *text, long len)
{
    mkdir(SHERL_TEST_WORK, 0755);
    snprintf(out, cap, "%s/dataset_%s", SHERL_TEST_WORK, name);
    write_file(out, text, len < 0 ? strlen(text) : (size_t)len);
}

static dataset_options single_opts(task_type task, int max_length)
{
    dataset_options o = {"text", NULL, "label", task, max_length};
    return o;
}

static dataset_options pair_opts(task_type task, int max_length)
{
    dataset_options o = {"text_a", "text_b", "label", task, max_length};
    return o;
}

/* The example's encoding equals wordpiece_encode of the same texts. */
static void expect_encoding(const tok_encoding *e, const char *a, const char *b, int max_length)
{
    tok_encoding ref;
    sherl_status st = wordpiece_encode(tok, a, b, max_length, &ref);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(e->len, ref.len, "'%s': %d tokens, expected %d", a, e->len, ref.len);
    for (int t = 0; t < ref.len; t++) {
        cr_assert_eq(e->input_ids[t], ref.input_ids[t], "'%s': token %d", a, t);
        cr_assert_eq(e->token_type_ids[t], ref.token_type_ids[t], "'%s': type %d", a, t);
        cr_assert_eq(e->attention_mask[t], 1);
    }
    tok_encoding_free(&ref);
}

static void expect_names(const label_map *lm, const char *const *names, int n)
{
    cr_assert_eq(lm->n, n, "label map has %d labels, expected %d", lm->n, n);
    for (int i = 0; i < n; i++)
        cr_assert_str_eq(lm->names[i], names[i], "label %d", i);
}

/* Loading `text` as file `name` fails; the message names the file, the line (":<line>:" unless
 * line is 0) and contains each of the reasons (NULL-terminated). The dataset is left empty and
 * a label map being built is untouched. */
static void expect_fail_opts(const char *name, const char *text, long len,
                             const dataset_options *opt, label_map *given, int line,
                             const char *const *reasons)
{
    char path[1024];
    put(path, sizeof path, name, text, len);
    dataset ds;
    label_map built = {0, NULL};
    label_map *lm = given ? given : &built;
    sherl_status st = dataset_load(&ds, path, opt, tok, lm, given == NULL);
    cr_assert_neq(st.code, SHERL_OK, "%s: loaded %d examples, expected an error", name, ds.n);
    cr_assert(strstr(st.msg, name), "message does not name the file: %s", st.msg);
    if (line > 0) {
        char at[64];
        snprintf(at, sizeof at, "%s:%d: ", name, line);
        cr_assert(strstr(st.msg, at), "message does not say '%s': %s", at, st.msg);
    }
    for (int i = 0; reasons[i]; i++)
        cr_assert(strstr(st.msg, reasons[i]), "message lacks '%s': %s", reasons[i], st.msg);
    cr_assert_eq(ds.n, 0);
    cr_assert_null(ds.enc);
    cr_assert_null(ds.labels);
    cr_assert_null(ds.targets);
    cr_assert_eq(built.n, 0);
    cr_assert_null(built.names);
}

#define REASONS(...) ((const char *const[]){__VA_ARGS__, NULL})

static void expect_fail(const char *name, const char *text, task_type task, int line,
                        const char *const *reasons)
{
    dataset_options o = single_opts(task, 32);
    expect_fail_opts(name, text, -1, &o, NULL, line, reasons);
}

/* ---------------------------------------------------------------------------------- */
/* loading                                                                              */

Test(dataset, jsonl_single_string_labels)
{
    static const char *texts[] = {"The movie was great!", "Terrible, awful film.",
                                  "It was okay, I guess.", "Loved it."};
    char path[1024];
    put(path, sizeof path, "single.jsonl",
        "{\"text\": \"The movie was great!\", \"label\": \"pos\"}\n"
        "{\"label\": \"neg\", \"text\": \"Terrible, awful film.\", \"extra\": [1, 2]}\n"
        "\n"
        "   \r\n"
        "{\"text\": \"It was okay, I guess.\", \"label\": \"neutral\"}\r\n"
        "{\"text\": \"Loved it.\", \"label\": \"pos\"}", /* no final newline */
        -1);
    dataset_options o = single_opts(TASK_CLASSIFICATION, 64);
    dataset ds;
    label_map lm = {0, NULL};
    sherl_status st = dataset_load(&ds, path, &o, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(ds.n, 4);
    cr_assert_str_eq(ds.path, path);
    expect_names(&lm, (const char *const[]){"neg", "neutral", "pos"}, 3);
    int want[] = {2, 0, 1, 2};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(ds.labels[i], want[i], "example %d", i);
        expect_encoding(&ds.enc[i], texts[i], NULL, 64);
    }
    cr_assert_null(ds.targets);
    cr_assert_eq(label_map_find(&lm, "pos"), 2);
    cr_assert_eq(label_map_find(&lm, "neg"), 0);
    cr_assert_eq(label_map_find(&lm, "maybe"), -1);

    /* The same labels as an evaluation set: mapped through the training map. */
    char eval[1024];
    put(eval, sizeof eval, "single_eval.json",
        "{\"text\": \"Loved it.\", \"label\": \"neutral\"}\n"
        "{\"text\": \"Bad.\", \"label\": \"neg\"}\n",
        -1);
    dataset ev;
    st = dataset_load(&ev, eval, &o, tok, &lm, 0);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(ev.n, 2);
    cr_assert_eq(ev.labels[0], 1);
    cr_assert_eq(ev.labels[1], 0);
    cr_assert_eq(lm.n, 3);
    dataset_free(&ev);
    dataset_free(&ds);
    cr_assert_eq(ds.n, 0);
    label_map_free(&lm);
    cr_assert_eq(lm.n, 0);
    cr_assert_null(lm.names);
}

Test(dataset, jsonl_pair_integer_labels_sorted_numerically)
{
    static const char *a[] = {"A man is playing a guitar.", "A woman slices an onion.",
                              "Kids play football.", "The cat sleeps."};
    static const char *b[] = {"Someone plays music.", "", "Nobody is outside.",
                              "A dog \"barks\" loudly."};
    char path[1024];
    put(path, sizeof path, "pair.jsonl",
        "{\"text_a\": \"A man is playing a guitar.\", \"text_b\": \"Someone plays music.\", "
        "\"label\": 2}\n"
        "{\"text_a\": \"A woman slices an onion.\", \"text_b\": \"\", \"label\": 0}\n"
        "{\"text_a\": \"Kids play football.\", \"text_b\": \"Nobody is outside.\", \"label\": 10}\n"
        "{\"text_a\": \"The cat sleeps.\", \"text_b\": \"A dog \\\"barks\\\" loudly.\", "
        "\"label\": \"1\"}\n",
        -1);
    dataset_options o = pair_opts(TASK_CLASSIFICATION, 128);
    dataset ds;
    label_map lm = {0, NULL};
    sherl_status st = dataset_load(&ds, path, &o, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(ds.n, 4);
    /* numerically, not "0" "1" "10" "2" */
    expect_names(&lm, (const char *const[]){"0", "1", "2", "10"}, 4);
    int want[] = {2, 0, 3, 1};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(ds.labels[i], want[i], "example %d", i);
        expect_encoding(&ds.enc[i], a[i], b[i], 128);
    }
    /* a pair has token type 1 after the first [SEP] */
    cr_assert_eq(ds.enc[0].token_type_ids[ds.enc[0].len - 1], 1);
    cr_assert_eq(ds.enc[0].token_type_ids[0], 0);

    /* An evaluation set may give the same labels as strings or integers. */
    char eval[1024];
    put(eval, sizeof eval, "pair_eval.jsonl",
        "{\"text_a\": \"x\", \"text_b\": \"y\", \"label\": \"10\"}\n"
        "{\"text_a\": \"x\", \"text_b\": \"y\", \"label\": 1}\n",
        -1);
    dataset ev;
    st = dataset_load(&ev, eval, &o, tok, &lm, 0);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(ev.labels[0], 3);
    cr_assert_eq(ev.labels[1], 1);
    dataset_free(&ev);
    dataset_free(&ds);
    label_map_free(&lm);
}

Test(dataset, mixed_labels_sorted_as_strings)
{
    char path[1024];
    put(path, sizeof path, "mixed.jsonl",
        "{\"text\": \"a\", \"label\": 10}\n"
        "{\"text\": \"b\", \"label\": \"neg\"}\n"
        "{\"text\": \"c\", \"label\": 2}\n"
        "{\"text\": \"d\", \"label\": -3}\n"
        "{\"text\": \"e\", \"label\": \"007\"}\n",
        -1);
    dataset_options o = single_opts(TASK_CLASSIFICATION, 16);
    dataset ds;
    label_map lm = {0, NULL};
    sherl_status st = dataset_load(&ds, path, &o, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    expect_names(&lm, (const char *const[]){"-3", "007", "10", "2", "neg"}, 5);
    int want[] = {2, 4, 3, 0, 1};
    for (int i = 0; i < 5; i++)
        cr_assert_eq(ds.labels[i], want[i], "example %d", i);
    dataset_free(&ds);
    label_map_free(&lm);

    /* Negative integers alone sort numerically. */
    put(path, sizeof path, "negative.jsonl",
        "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": -1}\n"
        "{\"text\": \"c\", \"label\": -20}\n{\"text\": \"d\", \"label\": 0}\n",
        -1);
    st = dataset_load(&ds, path, &o, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    expect_names(&lm, (const char *const[]){"-20", "-1", "0", "1"}, 4);
    dataset_free(&ds);
    label_map_free(&lm);
}

Test(dataset, tsv_glue_pairs)
{
    char path[1024];
    /* MNLI-like: more columns than used, CRLF endings, a blank line, quotes kept verbatim. */
    put(path, sizeof path, "glue.tsv",
        "index\tpromptID\tsentence1\tsentence2\tlabel\r\n"
        "0\t31193\tConceptually cream skimming has two basic dimensions.\tProduct and geography "
        "are what make cream skimming work.\tneutral\r\n"
        "1\t101457\tYou know during the season and i guess at at your level uh you lose them "
        "to the next level\tYou lose the things to the following level if the people recall."
        "\tentailment\r\n"
        "\r\n"
        "2\t134793\t\"One of our number will carry out your instructions minutely.\tA member of "
        "my team will execute your orders \"with\" immense precision.\tentailment\r\n"
        "3\t37397\tHow do you know? All this is their information again.\tThis information "
        "belongs to them.\tcontradiction",
        -1);
    dataset_options o = {"sentence1", "sentence2", "label", TASK_CLASSIFICATION, 128};
    dataset ds;
    label_map lm = {0, NULL};
    sherl_status st = dataset_load(&ds, path, &o, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(ds.n, 4);
    expect_names(&lm, (const char *const[]){"contradiction", "entailment", "neutral"}, 3);
    int want[] = {2, 1, 1, 0};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(ds.labels[i], want[i], "example %d", i);
    expect_encoding(&ds.enc[0], "Conceptually cream skimming has two basic dimensions.",
                    "Product and geography are what make cream skimming work.", 128);
    expect_encoding(&ds.enc[2],
                    "\"One of our number will carry out your instructions minutely.",
                    "A member of my team will execute your orders \"with\" immense precision.",
                    128);
    dataset_free(&ds);
    label_map_free(&lm);

    /* SST-2-like single sentences with "0"/"1" labels (strings in TSV, sorted numerically). */
    put(path, sizeof path, "sst2.tsv",
        "sentence\tlabel\n"
        "hide new secretions from the parental units \t0\n"
        "contains no wit , only labored gags \t0\n"
        "that loves its characters and communicates something rather beautiful \t1\n",
        -1);
    dataset_options o1 = {"sentence", NULL, "label", TASK_CLASSIFICATION, 64};
    st = dataset_load(&ds, path, &o1, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(ds.n, 3);
    expect_names(&lm, (const char *const[]){"0", "1"}, 2);
    cr_assert_eq(ds.labels[2], 1);
    expect_encoding(&ds.enc[1], "contains no wit , only labored gags ", NULL, 64);
    dataset_free(&ds);
    label_map_free(&lm);
}

Test(dataset, truncation_at_max_length)
{
    const char *long_text =
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen";
    char text[512];
    snprintf(text, sizeof text,
             "{\"text\": \"%s\", \"label\": 1}\n{\"text\": \"short\", \"label\": 0}\n", long_text);
    char path[1024];
    put(path, sizeof path, "trunc.jsonl", text, -1);
    dataset_options o = single_opts(TASK_CLASSIFICATION, 8);
    dataset ds;
    label_map lm = {0, NULL};
    sherl_status st = dataset_load(&ds, path, &o, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(ds.enc[0].len, 8);
    cr_assert_eq(ds.enc[0].input_ids[0], 101); /* [CLS] */
    cr_assert_eq(ds.enc[0].input_ids[7], 102); /* [SEP] */
    expect_encoding(&ds.enc[0], long_text, NULL, 8);
    cr_assert_eq(ds.enc[1].len, 3);
    dataset_free(&ds);

    /* Pairs: longest_first truncation, as wordpiece_encode does it. */
    snprintf(text, sizeof text,
             "{\"text_a\": \"%s\", \"text_b\": \"a b c d e\", \"label\": 1}\n", long_text);
    put(path, sizeof path, "trunc_pair.jsonl", text, -1);
    dataset_options op = pair_opts(TASK_CLASSIFICATION, 10);
    label_map_free(&lm);
    st = dataset_load(&ds, path, &op, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(ds.enc[0].len, 10);
    expect_encoding(&ds.enc[0], long_text, "a b c d e", 10);
    dataset_free(&ds);

    /* 0: the tokenizer's model_max_length; below 3 or negative: refused. */
    op.max_length = 0;
    label_map_free(&lm);
    st = dataset_load(&ds, path, &op, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    expect_encoding(&ds.enc[0], long_text, "a b c d e", 0);
    dataset_free(&ds);
    label_map_free(&lm);
    int bad[] = {-1, 1, 2, (1 << 20) + 1};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        op.max_length = bad[i];
        st = dataset_load(&ds, path, &op, tok, &lm, 1);
        cr_assert_eq(st.code, SHERL_EINVAL, "max_length %d", bad[i]);
        cr_assert(strstr(st.msg, "max_length"), "%s", st.msg);
        cr_assert_eq(lm.n, 0);
    }
}

Test(dataset, regression_targets)
{
    char path[1024];
    put(path, sizeof path, "reg.jsonl",
        "{\"text_a\": \"A plane is taking off.\", \"text_b\": \"An air plane is taking off.\", "
        "\"label\": 5.0}\n"
        "{\"text_a\": \"A man is slicing.\", \"text_b\": \"A man cuts.\", \"label\": 3.8}\n"
        "{\"text_a\": \"x\", \"text_b\": \"y\", \"label\": -1e-3}\n"
        "{\"text_a\": \"x\", \"text_b\": \"y\", \"label\": 0}\n",
        -1);
    dataset_options o = pair_opts(TASK_REGRESSION, 64);
    dataset ds;
    sherl_status st = dataset_load(&ds, path, &o, tok, NULL, 0);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(ds.n, 4);
    cr_assert_null(ds.labels);
    float want[] = {5.0f, 3.8f, -1e-3f, 0.0f};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(ds.targets[i], want[i], "target %d: %g", i, ds.targets[i]);
    expect_encoding(&ds.enc[1], "A man is slicing.", "A man cuts.", 64);
    dataset_free(&ds);

    /* STS-B-like TSV: the score column read with strtod; build_labels is ignored. */
    put(path, sizeof path, "stsb.tsv",
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air "
        "plane is taking off.\t5.000\n"
        "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a large flute."
        "\tA man is playing a flute.\t3.800\r\n"
        "2\tmain-news\theadlines\t2013\t0001\tnone\tnone\ta\tb\t-2.5e-1\n"
        "3\tmain-news\theadlines\t2013\t0002\tnone\tnone\ta\tb\t1e2\n",
        -1);
    dataset_options ot = {"sentence1", "sentence2", "score", TASK_REGRESSION, 64};
    label_map lm = {0, NULL};
    st = dataset_load(&ds, path, &ot, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(lm.n, 0);
    cr_assert_eq(ds.n, 4);
    float want2[] = {5.0f, 3.8f, -0.25f, 100.0f};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(ds.targets[i], want2[i], "target %d: %g", i, ds.targets[i]);
    expect_encoding(&ds.enc[1], "A man is playing a large flute.", "A man is playing a flute.",
                    64);
    dataset_free(&ds);
}

Test(dataset, utf8_bom_and_unicode_text)
{
    char path[1024];
    put(path, sizeof path, "bom.tsv",
        "\xEF\xBB\xBFsentence\tlabel\n"
        "Caf\xC3\xA9 cr\xC3\xA8me br\xC3\xBBl\xC3\xA9"
        "e \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80\tyes\n",
        -1);
    dataset_options o = {"sentence", NULL, "label", TASK_CLASSIFICATION, 32};
    dataset ds;
    label_map lm = {0, NULL};
    sherl_status st = dataset_load(&ds, path, &o, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    expect_encoding(&ds.enc[0],
                    "Caf\xC3\xA9 cr\xC3\xA8me br\xC3\xBBl\xC3\xA9" "e \xE4\xB8\xAD\xE6\x96\x87 "
                    "\xF0\x9F\x98\x80",
                    NULL, 32);
    dataset_free(&ds);
    label_map_free(&lm);
}

/* ---------------------------------------------------------------------------------- */
/* errors                                                                               */

Test(dataset, error_missing_file)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/dataset_no_such_file.jsonl", SHERL_TEST_WORK);
    remove(path);
    dataset_options o = single_opts(TASK_CLASSIFICATION, 32);
    dataset ds;
    label_map lm = {0, NULL};
    sherl_status st = dataset_load(&ds, path, &o, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_EIO, "%s", st.msg);
    cr_assert(strstr(st.msg, path), "%s", st.msg);
    cr_assert_eq(lm.n, 0);
}

Test(dataset, error_empty_or_no_examples)
{
    expect_fail("empty.jsonl", "", TASK_CLASSIFICATION, 0, REASONS("no examples", "empty"));
    expect_fail("blank.jsonl", "\n  \n\r\n\t\n", TASK_CLASSIFICATION, 0,
                REASONS("no examples", "blank"));
    dataset_options o = {"sentence", NULL, "label", TASK_CLASSIFICATION, 32};
    expect_fail_opts("empty.tsv", "", -1, &o, NULL, 0, REASONS("no examples"));
    expect_fail_opts("header_only.tsv", "sentence\tlabel\n\n", -1, &o, NULL, 0,
                     REASONS("no examples", "header"));
}

Test(dataset, error_invalid_utf8)
{
    const char *const r[] = {"invalid UTF-8", NULL};
    expect_fail("utf8_ff.jsonl",
                "{\"text\": \"fine\", \"label\": \"a\"}\n"
                "{\"text\": \"bad \xff\", \"label\": \"a\"}\n",
                TASK_CLASSIFICATION, 2, r);
    expect_fail("utf8_overlong.jsonl", "{\"text\": \"\xc0\xaf\", \"label\": \"a\"}\n",
                TASK_CLASSIFICATION, 1, r);
    expect_fail("utf8_surrogate.jsonl",
                "\n\n{\"text\": \"\xed\xa0\x80\", \"label\": \"a\"}\n", TASK_CLASSIFICATION, 3, r);
    expect_fail("utf8_cut.jsonl", "{\"text\": \"x\", \"label\": \"a\"}\n{\"text\": \"\xe4\xb8",
                TASK_CLASSIFICATION, 2, r);
    dataset_options o = {"sentence", NULL, "label", TASK_CLASSIFICATION, 32};
    expect_fail_opts("utf8.tsv", "sentence\tlabel\nok\t1\nnot \xf5 ok\t0\n", -1, &o, NULL, 3, r);
    /* a label in a foreign encoding is caught too */
    expect_fail_opts("utf8_label.tsv", "sentence\tlabel\nok\tn\xe9g\n", -1, &o, NULL, 2, r);
    /* NUL bytes cannot be part of a C string */
    expect_fail_opts("nul.tsv", "sentence\tlabel\nok\t1\nn\0l\t1\n", 26, &o, NULL, 3,
                     REASONS("NUL"));
    expect_fail("nul_escape.jsonl", "{\"text\": \"a\\u0000b\", \"label\": \"a\"}\n",
                TASK_CLASSIFICATION, 1, REASONS("U+0000"));
}

Test(dataset, error_malformed_json)
{
    expect_fail("malformed.jsonl",
                "{\"text\": \"a\", \"label\": \"x\"}\n"
                "{\"text\": \"b\", \"label\": \"y\"}\n"
                "{\"text\": \"c\", \"label\": \"x\"\n",
                TASK_CLASSIFICATION, 3, REASONS("not valid JSON"));
    expect_fail("trailing.jsonl", "{\"text\": \"a\", \"label\": \"x\"} {\"text\": \"b\"}\n",
                TASK_CLASSIFICATION, 1, REASONS("unexpected data"));
    /* one JSON document spread over lines is not JSON lines */
    expect_fail("multiline.json", "{\n  \"text\": \"a\",\n  \"label\": \"x\"\n}\n",
                TASK_CLASSIFICATION, 1, REASONS("not valid JSON"));
}

Test(dataset, error_not_an_object)
{
    expect_fail("array.jsonl", "[\"a\", 1]\n", TASK_CLASSIFICATION, 1,
                REASONS("not a JSON object"));
    expect_fail("string.jsonl",
                "{\"text\": \"a\", \"label\": \"x\"}\n\"just text\"\n", TASK_CLASSIFICATION, 2,
                REASONS("not a JSON object"));
    expect_fail("number.jsonl", "42\n", TASK_CLASSIFICATION, 1, REASONS("not a JSON object"));
}

Test(dataset, error_missing_field)
{
    expect_fail("no_text.jsonl",
                "{\"text\": \"a\", \"label\": \"x\"}\n{\"txt\": \"a\", \"label\": \"x\"}\n",
                TASK_CLASSIFICATION, 2, REASONS("'text'", "missing"));
    expect_fail("no_label.jsonl", "{\"text\": \"a\"}\n", TASK_CLASSIFICATION, 1,
                REASONS("'label'", "missing"));
    expect_fail("no_target.jsonl", "{\"text\": \"a\"}\n", TASK_REGRESSION, 1,
                REASONS("'label'", "missing"));
    dataset_options o = pair_opts(TASK_CLASSIFICATION, 32);
    expect_fail_opts("no_text_b.jsonl", "{\"text_a\": \"a\", \"label\": 1}\n", -1, &o, NULL, 1,
                     REASONS("'text_b'", "missing"));
    /* field names are case-sensitive */
    expect_fail("case.jsonl", "{\"Text\": \"a\", \"label\": 1}\n", TASK_CLASSIFICATION, 1,
                REASONS("'text'", "missing"));
}

Test(dataset, error_wrong_type)
{
    expect_fail("text_number.jsonl", "{\"text\": 5, \"label\": \"x\"}\n", TASK_CLASSIFICATION,
                1, REASONS("'text' is 5", "expected a string"));
    expect_fail("text_null.jsonl", "{\"text\": null, \"label\": \"x\"}\n", TASK_CLASSIFICATION,
                1, REASONS("'text' is null", "expected a string"));
    expect_fail("text_array.jsonl", "{\"text\": [\"a\"], \"label\": \"x\"}\n",
                TASK_CLASSIFICATION, 1, REASONS("'text' is an array"));
    expect_fail("label_bool.jsonl", "{\"text\": \"a\", \"label\": true}\n", TASK_CLASSIFICATION,
                1, REASONS("'label' is true", "expected a string or an integer"));
    expect_fail("label_float.jsonl", "{\"text\": \"a\", \"label\": 0.5}\n", TASK_CLASSIFICATION,
                1, REASONS("'label' is 0.5", "expected a string or an integer"));
    expect_fail("label_huge.jsonl", "{\"text\": \"a\", \"label\": 1e300}\n",
                TASK_CLASSIFICATION, 1, REASONS("expected a string or an integer"));
    expect_fail("label_empty.jsonl", "{\"text\": \"a\", \"label\": \"\"}\n", TASK_CLASSIFICATION,
                1, REASONS("empty label"));
    expect_fail("target_string.jsonl", "{\"text\": \"a\", \"label\": \"3.5\"}\n", TASK_REGRESSION,
                1, REASONS("'label' is the string \"3.5\"", "expected a finite number"));
    expect_fail("target_inf.jsonl", "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"a\", "
                "\"label\": 1e999}\n", TASK_REGRESSION, 2, REASONS("expected a finite number"));
    expect_fail("target_float_range.jsonl", "{\"text\": \"a\", \"label\": 1e39}\n",
                TASK_REGRESSION, 1, REASONS("expected a finite number"));
}

Test(dataset, error_unknown_label_in_eval_set)
{
    char *names[] = {"neg", "neutral", "pos"};
    label_map lm = {3, names};
    dataset_options o = single_opts(TASK_CLASSIFICATION, 32);
    expect_fail_opts("unknown_label.jsonl",
                     "{\"text\": \"a\", \"label\": \"pos\"}\n"
                     "{\"text\": \"b\", \"label\": \"maybe\"}\n",
                     -1, &o, &lm, 2, REASONS("unknown label 'maybe'", "'neg'", "'pos'"));
    expect_fail_opts("unknown_int.jsonl", "{\"text\": \"a\", \"label\": 7}\n", -1, &o, &lm, 1,
                     REASONS("unknown label '7'", "'neutral'"));
    dataset_options t = {"sentence", NULL, "label", TASK_CLASSIFICATION, 32};
    expect_fail_opts("unknown_label.tsv", "sentence\tlabel\nx\tpos\n\ny\tPOS\n", -1, &t, &lm, 4,
                     REASONS("unknown label 'POS'"));

    /* many labels: a few are listed */
    char *many[] = {"l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9"};
    label_map big = {10, many};
    expect_fail_opts("unknown_many.jsonl", "{\"text\": \"a\", \"label\": \"l10\"}\n", -1, &o,
                     &big, 1, REASONS("unknown label 'l10'", "'l0'", "10 known labels", "..."));
}

Test(dataset, error_tsv_rows_and_header)
{
    dataset_options o = {"sentence1", "sentence2", "label", TASK_CLASSIFICATION, 32};
    expect_fail_opts("columns.tsv",
                     "sentence1\tsentence2\tlabel\na\tb\tyes\na\tno\n", -1, &o, NULL, 3,
                     REASONS("row has 2 columns", "has 3"));
    expect_fail_opts("columns_more.tsv",
                     "sentence1\tsentence2\tlabel\na\tb\tyes\t\n", -1, &o, NULL, 2,
                     REASONS("row has 4 columns"));
    expect_fail_opts("no_column.tsv", "index\tsentence\tsentence2\tlabel\n0\ta\tb\tyes\n", -1,
                     &o, NULL, 1,
                     REASONS("no column 'sentence1'", "'index'", "'sentence'", "'label'"));
    dataset_options r = {"sentence1", "sentence2", "score", TASK_REGRESSION, 32};
    expect_fail_opts("no_score.tsv", "sentence1\tsentence2\tlabel\na\tb\t1\n", -1, &r, NULL, 1,
                     REASONS("no column 'score'", "'label'"));
    expect_fail_opts("twice.tsv", "sentence1\tsentence2\tlabel\tlabel\na\tb\t1\t2\n", -1, &o,
                     NULL, 1, REASONS("'label' twice"));
    expect_fail_opts("tsv_empty_label.tsv", "sentence1\tsentence2\tlabel\na\tb\t\n", -1, &o,
                     NULL, 2, REASONS("empty label"));
    /* regression targets: the whole field must be a finite number */
    const char *bad[] = {"abc", "1.5x", "", " 2", "2 ", "nan", "inf", "1e39", "0x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[256], name[64];
        snprintf(text, sizeof text, "sentence1\tsentence2\tscore\na\tb\t1\n\na\tb\t%s\n", bad[i]);
        snprintf(name, sizeof name, "bad_score_%zu.tsv", i);
        expect_fail_opts(name, text, -1, &r, NULL, 4,
                         REASONS("column 'score'", "expected a finite number"));
    }
}

Test(dataset, error_line_too_long)
{
    size_t n = DATASET_MAX_LINE_BYTES + 100;
    char *text = malloc(n + 64);
    cr_assert_not_null(text);
    size_t k = (size_t)sprintf(text, "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"");
    memset(text + k, 'a', n);
    k += n;
    k += (size_t)sprintf(text + k, "\", \"label\": 1}\n");
    dataset_options o = single_opts(TASK_CLASSIFICATION, 32);
    expect_fail_opts("long_line.jsonl", text, (long)k, &o, NULL, 2, REASONS("too long"));
    free(text);
}

Test(dataset, error_bad_arguments)
{
    char path[1024];
    put(path, sizeof path, "args.jsonl", "{\"text\": \"a\", \"label\": 1}\n", -1);
    dataset ds;
    label_map lm = {0, NULL};
    dataset_options o = single_opts(TASK_CLASSIFICATION, 32);
    cr_assert_eq(dataset_load(&ds, NULL, &o, tok, &lm, 1).code, SHERL_EINVAL);
    cr_assert_eq(dataset_load(&ds, path, NULL, tok, &lm, 1).code, SHERL_EINVAL);
    cr_assert_eq(dataset_load(&ds, path, &o, NULL, &lm, 1).code, SHERL_EINVAL);
    cr_assert_eq(dataset_load(NULL, path, &o, tok, &lm, 1).code, SHERL_EINVAL);
    /* classification needs a map; an evaluation set needs a non-empty one */
    cr_assert_eq(dataset_load(&ds, path, &o, tok, NULL, 1).code, SHERL_EINVAL);
    cr_assert_eq(dataset_load(&ds, path, &o, tok, &lm, 0).code, SHERL_EINVAL);
    char *dup[] = {"a", "a"};
    label_map dm = {2, dup};
    sherl_status st = dataset_load(&ds, path, &o, tok, &dm, 0);
    cr_assert_eq(st.code, SHERL_EINVAL);
    cr_assert(strstr(st.msg, "twice"), "%s", st.msg);
    dataset_options bad = o;
    bad.text_a_field = "";
    cr_assert_eq(dataset_load(&ds, path, &bad, tok, &lm, 1).code, SHERL_EINVAL);
    bad = o;
    bad.label_field = NULL;
    cr_assert_eq(dataset_load(&ds, path, &bad, tok, &lm, 1).code, SHERL_EINVAL);
    bad = o;
    bad.task = (task_type)7;
    cr_assert_eq(dataset_load(&ds, path, &bad, tok, &lm, 1).code, SHERL_EINVAL);
    /* a format we do not read */
    put(path, sizeof path, "data.csv", "text,label\na,1\n", -1);
    st = dataset_load(&ds, path, &o, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_EUNSUPPORTED);
    cr_assert(strstr(st.msg, "data.csv") && strstr(st.msg, ".tsv"), "%s", st.msg);
    /* a directory */
    st = dataset_load(&ds, SHERL_TEST_WORK "/", &o, tok, &lm, 1);
    cr_assert_neq(st.code, SHERL_OK);
    cr_assert_eq(lm.n, 0);
    cr_assert_eq(ds.n, 0);
}

Test(dataset, error_long_path_keeps_file_and_line)
{
    /* a path longer than a message holds is shortened from the left */
    char dir[1024];
    mkdir(SHERL_TEST_WORK, 0755);
    int k = snprintf(dir, sizeof dir, "%s/dataset_long", SHERL_TEST_WORK);
    mkdir(dir, 0755);
    for (int level = 0; level < 3; level++) { /* 3 folders of 100 characters */
        dir[k++] = '/';
        memset(dir + k, 'd', 100);
        k += 100;
        dir[k] = '\0';
        mkdir(dir, 0755);
    }
    char path[1100];
    snprintf(path, sizeof path, "%s/deep.jsonl", dir);
    const char *text = "{\"text\": \"a\", \"label\": 1}\n{\"text\": 2, \"label\": 1}\n";
    write_file(path, text, strlen(text));
    dataset_options o = single_opts(TASK_CLASSIFICATION, 32);
    dataset ds;
    label_map lm = {0, NULL};
    sherl_status st = dataset_load(&ds, path, &o, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert(strstr(st.msg, "...ddd"), "%s", st.msg);
    cr_assert(strstr(st.msg, "/deep.jsonl:2: field 'text' is 2, expected a string"), "%s", st.msg);
}

/* ---------------------------------------------------------------------------------- */
/* batches                                                                              */

Test(dataset, batch_padding_and_labels)
{
    char path[1024];
    put(path, sizeof path, "batch.jsonl",
        "{\"text\": \"Short.\", \"label\": \"b\"}\n"
        "{\"text\": \"A somewhat longer sentence than the first one.\", \"label\": \"a\"}\n"
        "{\"text\": \"Middle sized one here.\", \"label\": \"c\"}\n",
        -1);
    dataset_options o = single_opts(TASK_CLASSIFICATION, 64);
    dataset ds;
    label_map lm = {0, NULL};
    sherl_status st = dataset_load(&ds, path, &o, tok, &lm, 1);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    int pad = wordpiece_pad_id(tok);
    int idx[] = {2, 0, 1};
    bert_batch b;
    int32_t labels[3] = {-7, -7, -7};
    st = dataset_batch(&ds, idx, 3, pad, &b, labels, NULL);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(b.B, 3);
    int T = 0;
    for (int i = 0; i < 3; i++)
        if (ds.enc[i].len > T)
            T = ds.enc[i].len;
    cr_assert_eq(b.T, T);
    cr_assert_eq(b.T, ds.enc[1].len);
    for (int r = 0; r < 3; r++) {
        const tok_encoding *e = &ds.enc[idx[r]];
        for (int t = 0; t < T; t++) {
            size_t k = (size_t)r * T + t;
            if (t < e->len) {
                cr_assert_eq(b.input_ids[k], e->input_ids[t]);
                cr_assert_eq(b.attention_mask[k], 1);
            } else {
                cr_assert_eq(b.input_ids[k], pad, "row %d col %d", r, t);
                cr_assert_eq(b.attention_mask[k], 0);
            }
            cr_assert_eq(b.token_type_ids[k], 0);
        }
        cr_assert_eq(labels[r], ds.labels[idx[r]]);
    }
    cr_assert_eq(labels[0], 2); /* "c" */
    cr_assert_eq(labels[1], 1); /* "b" */
    cr_assert_eq(labels[2], 0); /* "a" */
    bert_batch_free(&b);

    /* one example: T is its own length; labels may be NULL */
    int one = 0;
    st = dataset_batch(&ds, &one, 1, pad, &b, NULL, NULL);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(b.B, 1);
    cr_assert_eq(b.T, ds.enc[0].len);
    bert_batch_free(&b);

    /* bad requests */
    int out_of_range[] = {0, 3};
    st = dataset_batch(&ds, out_of_range, 2, pad, &b, labels, NULL);
    cr_assert_eq(st.code, SHERL_EINVAL);
    cr_assert_null(b.input_ids);
    int negative[] = {-1};
    cr_assert_eq(dataset_batch(&ds, negative, 1, pad, &b, NULL, NULL).code, SHERL_EINVAL);
    cr_assert_eq(dataset_batch(&ds, idx, 0, pad, &b, NULL, NULL).code, SHERL_EINVAL);
    /* a classification set has no targets: zeros */
    float targets[3] = {-1, -1, -1};
    st = dataset_batch(&ds, idx, 3, pad, &b, labels, targets);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(targets[i], 0.0f);
    cr_assert_eq(labels[0], 2);
    bert_batch_free(&b);
    dataset_free(&ds);
    label_map_free(&lm);
}

Test(dataset, batch_regression_pairs)
{
    char path[1024];
    put(path, sizeof path, "batch_reg.jsonl",
        "{\"text_a\": \"one\", \"text_b\": \"two three\", \"label\": 0.25}\n"
        "{\"text_a\": \"four five six\", \"text_b\": \"seven\", \"label\": 4.5}\n",
        -1);
    dataset_options o = pair_opts(TASK_REGRESSION, 32);
    dataset ds;
    sherl_status st = dataset_load(&ds, path, &o, tok, NULL, 0);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    int idx[] = {1, 0};
    bert_batch b;
    float targets[2];
    st = dataset_batch(&ds, idx, 2, 0, &b, NULL, targets);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(targets[0], 4.5f);
    cr_assert_eq(targets[1], 0.25f);
    /* token types of the second text survive padding */
    int T = b.T;
    const tok_encoding *e = &ds.enc[0];
    for (int t = 0; t < T; t++)
        cr_assert_eq(b.token_type_ids[T + t], t < e->len ? e->token_type_ids[t] : 0);
    bert_batch_free(&b);
    /* a regression set has no class labels: zeros */
    int32_t labels[2] = {-1, -1};
    st = dataset_batch(&ds, idx, 2, 0, &b, labels, targets);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(labels[0], 0);
    cr_assert_eq(labels[1], 0);
    cr_assert_eq(targets[0], 4.5f);
    bert_batch_free(&b);
    dataset_free(&ds);
}

/* ---------------------------------------------------------------------------------- */
/* shuffling                                                                            */

static void expect_permutation(const int *p, int n)
{
    char *seen = calloc((size_t)n, 1);
    cr_assert_not_null(seen);
    for (int i = 0; i < n; i++) {
        cr_assert(p[i] >= 0 && p[i] < n, "perm[%d] = %d", i, p[i]);
        cr_assert_eq(seen[p[i]], 0, "%d twice", p[i]);
        seen[p[i]] = 1;
    }
    free(seen);
}

Test(dataset, shuffle)
{
    enum { N = 1000 };
    static int a[N], b[N], c[N], d[N];
    dataset_shuffle(a, N, 17, 0);
    dataset_shuffle(b, N, 17, 0);
    dataset_shuffle(c, N, 17, 1);
    dataset_shuffle(d, N, 18, 0);
    expect_permutation(a, N);
    expect_permutation(c, N);
    expect_permutation(d, N);
    cr_assert_eq(memcmp(a, b, sizeof a), 0, "same (seed, epoch) must give the same order");
    cr_assert_neq(memcmp(a, c, sizeof a), 0, "another epoch must give another order");
    cr_assert_neq(memcmp(a, d, sizeof a), 0, "another seed must give another order");
    /* it actually shuffles: few fixed points, and no two epochs agree much */
    int fixed = 0, same = 0;
    for (int i = 0; i < N; i++) {
        fixed += a[i] == i;
        same += a[i] == c[i];
    }
    cr_assert_lt(fixed, 20, "%d fixed points", fixed);
    cr_assert_lt(same, 20, "%d positions agree across epochs", same);
    /* roughly uniform: where element 0 lands over many epochs */
    int first_half = 0;
    for (int e = 0; e < 400; e++) {
        dataset_shuffle(b, N, 5, e);
        for (int i = 0; i < N; i++)
            if (b[i] == 0) {
                first_half += i < N / 2;
                break;
            }
    }
    cr_assert(first_half > 140 && first_half < 260, "element 0 in the first half %d/400 times",
              first_half);
    /* the permutation over all 6 orders of 3 elements shows up across epochs */
    int seen_orders[6] = {0};
    for (int e = 0; e < 200; e++) {
        int p[3];
        dataset_shuffle(p, 3, 99, e);
        expect_permutation(p, 3);
        seen_orders[p[0] * 2 + (p[1] > p[2])]++;
    }
    for (int k = 0; k < 6; k++)
        cr_assert_gt(seen_orders[k], 10, "order %d seen %d times in 200", k, seen_orders[k]);
    /* trivial sizes */
    int one = 42;
    dataset_shuffle(&one, 1, 1, 1);
    cr_assert_eq(one, 0);
    dataset_shuffle(&one, 0, 1, 1);
    dataset_shuffle(NULL, 5, 1, 1);
    /* negative epochs are just other epochs */
    dataset_shuffle(c, N, 17, -1);
    expect_permutation(c, N);
    cr_assert_neq(memcmp(a, c, sizeof a), 0);
}

/* ---------------------------------------------------------------------------------- */
/* arbitrary input never crashes                                                        */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

Test(dataset, arbitrary_input)
{
    /* Valid files with a few random edits: inserted fragments, deleted or replaced bytes. */
    static const char *const pieces[] = {
        "{", "}", "[", "]", "\"", "\"text\"", "\"label\"", ":", ",", "\n", "\r\n", "\t", " ",
        "1", "-2", "0.5", "1e999", "\"x\"", "\"pos\"", "null", "true", "\xff", "\xc3\xa9",
        "\xe4\xb8", "\xed\xa0\x80", "\\u0000", "\\ud800", "\\\"", "hello world", "[CLS]",
        "\xEF\xBB\xBF", "\0", "sentence", "label",
    };
    /* JSONL and TSV, classification then regression */
    static const char *const bases[] = {
        "{\"text\": \"Good film.\", \"label\": \"pos\"}\n"
        "{\"text\": \"Bad one\", \"label\": \"neg\"}\n"
        "{\"text\": \"meh\", \"label\": 1}\n{\"text\": \"x y z\", \"label\": \"pos\"}\n",
        "sentence\tlabel\nGood film.\tpos\nBad one\tneg\n\nmeh\t1\nx y z\tpos\n",
        "{\"text\": \"Good film.\", \"label\": 4.5}\n{\"text\": \"Bad one\", \"label\": -1}\n"
        "{\"text\": \"meh\", \"label\": 0}\n{\"text\": \"x y z\", \"label\": 2.5e-1}\n",
        "sentence\tlabel\nGood film.\t4.5\nBad one\t-1\n\nmeh\t0\nx y z\t2.5e-1\n",
    };
    static const char *const names[] = {"fuzz.jsonl", "fuzz.tsv"};
    const uint64_t np = sizeof pieces / sizeof pieces[0];
    char *given_names[] = {"neg", "pos", "1"};
    label_map given = {3, given_names};
    uint64_t s = 12345;
    char buf[4096];
    char path[1024];
    int ok = 0, runs = 0;
    for (int iter = 0; iter < 600; iter++) {
        int f = iter % 2, reg = iter % 4 >= 2;
        size_t k = strlen(bases[iter % 4]);
        memcpy(buf, bases[iter % 4], k);
        int edits = (int)(rng_next(&s) % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = k ? (size_t)(rng_next(&s) % k) : 0;
            int kind = (int)(rng_next(&s) % 3);
            if (kind == 0) { /* insert a piece */
                const char *p = pieces[rng_next(&s) % np];
                size_t l = p[0] ? strlen(p) : 1;
                if (k + l >= sizeof buf)
                    continue;
                memmove(buf + at + l, buf + at, k - at);
                memcpy(buf + at, p, l);
                k += l;
            } else if (kind == 1 && k) { /* delete a few bytes */
                size_t l = 1 + (size_t)(rng_next(&s) % 8);
                if (l > k - at)
                    l = k - at;
                memmove(buf + at, buf + at + l, k - at - l);
                k -= l;
            } else if (k) { /* replace a byte */
                buf[at] = (char)(rng_next(&s) & 0xff);
            }
        }
        put(path, sizeof path, names[f], buf, (long)k);
        for (int mode = reg ? 2 : 0; mode < (reg ? 3 : 2); mode++) {
            /* 0: classification building the map, 1: against a given map, 2: regression */
            dataset_options o = single_opts(TASK_CLASSIFICATION, 16);
            if (f)
                o.text_a_field = "sentence";
            if (mode == 2)
                o.task = TASK_REGRESSION;
            dataset ds;
            label_map lm = {0, NULL};
            sherl_status st = dataset_load(&ds, path, &o, tok, mode == 1 ? &given : &lm, mode == 0);
            runs++;
            if (st.code != SHERL_OK) {
                cr_assert(strstr(st.msg, names[f]), "%s", st.msg);
                cr_assert_eq(lm.n, 0);
                continue;
            }
            ok++;
            cr_assert_gt(ds.n, 0);
            int nl = mode == 1 ? given.n : lm.n;
            for (int i = 0; i < ds.n; i++) {
                cr_assert(ds.enc[i].len >= 2 && ds.enc[i].len <= 16);
                if (mode < 2)
                    cr_assert(ds.labels[i] >= 0 && ds.labels[i] < nl);
                else
                    cr_assert(isfinite(ds.targets[i]));
            }
            dataset_free(&ds);
            label_map_free(&lm);
        }
    }
    cr_log_info("arbitrary input: %d of %d loads succeeded", ok, runs);
    cr_assert_gt(ok, 20, "the edits should leave some files valid");
    cr_assert_lt(ok, runs - 100, "the edits should break many files");
}
