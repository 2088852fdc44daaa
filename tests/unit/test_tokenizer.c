/* Tests of the WordPiece tokenizer (engine/tokenizer.c).
 *
 * Built twice (tests/cmake/tokenizer.cmake):
 *  - test_tokenizer: hand-computed expectations on a tiny vocabulary, loader errors, and
 *    robustness against arbitrary bytes;
 *  - test_tokenizer_parity (SHERL_TOKENIZER_PARITY): compares against the outputs of
 *    Hugging Face's BertTokenizer written by tests/oracle/tokenizer_reference.py (every
 *    WordNet gloss plus hard and random cases in five configurations), and the Unicode
 *    facts and normalization against Python's unicodedata. */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

#include "test_util.h"
#include "tokenizer.h"

#ifndef SHERL_TOKENIZER_PARITY

/* A fresh folder under the build's test work folder. */
static void work_dir(char *out, size_t cap, const char *name)
{
    mkdir(SHERL_TEST_WORK, 0755);
    snprintf(out, cap, "%s/tokenizer_%s", SHERL_TEST_WORK, name);
    mkdir(out, 0755);
    char p[1024];
    const char *files[] = {"vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                           "added_tokens.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", out, files[i]);
        remove(p);
    }
}


/* ---------------------------------------------------------------------------------- */
/* Hand-computed expectations on a tiny vocabulary                                      */

static const char *const tiny_vocab[] = {
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", /* 0-4 */
    "un", "##aff", "##able", "hello", "world",    /* 5-9 */
    ",", "!", "cafe", "\xe4\xb8\xad", "\xe6\x96\x87", /* 10-14: 中 文 */
    "the", "a", "##a", "b", "[",                  /* 15-19 */
    "]", "x", "##x", "Hello", "##s",              /* 20-24 */
    ".", "running", "run", "##ning", "caf\xc3\xa9", /* 25-29: café */
};
#define TINY_N ((int)(sizeof tiny_vocab / sizeof tiny_vocab[0]))

static void tiny_vocab_path(char *out, size_t cap)
{
    char dir[512];
    work_dir(dir, sizeof dir, "tiny");
    snprintf(out, cap, "%s/vocab.txt", dir);
    FILE *f = fopen(out, "wb");
    cr_assert_not_null(f);
    for (int i = 0; i < TINY_N; i++)
        fprintf(f, "%s\n", tiny_vocab[i]);
    fclose(f);
}

static wordpiece_tokenizer *tiny(int lower, int strip, int cjk, int max_len)
{
    char path[600];
    tiny_vocab_path(path, sizeof path);
    wordpiece_options o = {lower, strip, cjk, max_len};
    wordpiece_tokenizer *t = NULL;
    sherl_status st = wordpiece_load_vocab(&t, path, &o);
    cr_assert_eq(st.code, SHERL_OK, "load tiny vocab: %s", st.msg);
    return t;
}

/* Tokenizes text and compares with the space-separated expected tokens. */
static void expect_tokens(const wordpiece_tokenizer *t, const char *text, const char *expected)
{
    char **toks = NULL;
    int n = 0;
    sherl_status st = wordpiece_tokenize(t, text, &toks, &n);
    cr_assert_eq(st.code, SHERL_OK, "tokenize \"%s\": %s", text, st.msg);
    char got[4096] = "";
    for (int i = 0; i < n; i++) {
        if (i)
            strncat(got, " ", sizeof got - strlen(got) - 1);
        strncat(got, toks[i], sizeof got - strlen(got) - 1);
    }
    wordpiece_free_tokens(toks, n);
    cr_expect_str_eq(got, expected, "tokens of \"%s\": expected [%s], got [%s]", text, expected,
                     got);
}

static void expect_encoding(const wordpiece_tokenizer *t, const char *a, const char *b, int max_len,
                            const int *ids, const int *types, int n)
{
    tok_encoding e;
    sherl_status st = wordpiece_encode(t, a, b, max_len, &e);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(e.len, n, "encode(\"%s\", \"%s\", %d): length %d, expected %d", a, b ? b : "(null)",
                 max_len, e.len, n);
    for (int i = 0; i < n; i++) {
        cr_expect_eq(e.input_ids[i], ids[i], "input_ids[%d] = %d, expected %d", i, e.input_ids[i],
                     ids[i]);
        cr_expect_eq(e.token_type_ids[i], types[i], "token_type_ids[%d]", i);
        cr_expect_eq(e.attention_mask[i], 1, "attention_mask[%d]", i);
    }
    tok_encoding_free(&e);
}

Test(tokenizer, wordpiece_greedy_longest_match)
{
    wordpiece_tokenizer *t = tiny(1, -1, 1, 512);
    expect_tokens(t, "unaffable", "un ##aff ##able");
    expect_tokens(t, "UnAffABLE", "un ##aff ##able");
    expect_tokens(t, "unaffablex", "un ##aff ##able ##x");
    expect_tokens(t, "running", "running");
    expect_tokens(t, "runningx", "running ##x");
    expect_tokens(t, "runx", "run ##x");
    expect_tokens(t, "aaa", "a ##a ##a");
    /* One piece missing: the whole word is [UNK], the neighbours are not. */
    expect_tokens(t, "unaffabley", "[UNK]");
    expect_tokens(t, "hello unaffabley world", "hello [UNK] world");
    expect_tokens(t, "xa", "x ##a");
    expect_tokens(t, "xb", "[UNK]"); /* no ##b */
    wordpiece_free(t);
}

Test(tokenizer, word_length_limit)
{
    wordpiece_tokenizer *t = tiny(1, -1, 1, 512);
    char w[200];
    memset(w, 'a', 100);
    w[100] = '\0';
    char **toks;
    int n;
    cr_assert_eq(wordpiece_tokenize(t, w, &toks, &n).code, SHERL_OK);
    cr_expect_eq(n, 100, "100 characters: a + 99 x ##a");
    cr_expect_str_eq(toks[0], "a");
    cr_expect_str_eq(toks[99], "##a");
    wordpiece_free_tokens(toks, n);
    memset(w, 'a', 101);
    w[101] = '\0';
    expect_tokens(t, w, "[UNK]");
    /* The limit counts characters, not bytes: 60 x "á" is 120 bytes but 60 characters. */
    char e[200] = "";
    for (int i = 0; i < 60; i++)
        strcat(e, "\xc3\xa1");
    cr_assert_eq(wordpiece_tokenize(t, e, &toks, &n).code, SHERL_OK);
    cr_expect_eq(n, 60, "á x 60 after accent stripping is a ##a..., got %d tokens", n);
    wordpiece_free_tokens(toks, n);
    wordpiece_free(t);
}

Test(tokenizer, basic_splitting)
{
    wordpiece_tokenizer *t = tiny(1, -1, 1, 512);
    expect_tokens(t, "hello, world!", "hello , world !");
    expect_tokens(t, "hello,world!!", "hello , world ! !");
    expect_tokens(t, "  hello\t\n world \r ", "hello world");
    expect_tokens(t, "hello\xe2\x80\xa8world", "hello world");  /* U+2028 */
    expect_tokens(t, "hel\xe2\x80\x8blo", "hello");              /* U+200B dropped */
    expect_tokens(t, "hel\x01lo", "hello");                      /* control dropped */
    expect_tokens(t, "hello\xc2\xa0world", "hello world");       /* NBSP is whitespace */
    expect_tokens(t, "\xe4\xb8\xad\xe6\x96\x87", "\xe4\xb8\xad \xe6\x96\x87"); /* 中文 */
    expect_tokens(t, "a\xe4\xb8\xad" "b", "a \xe4\xb8\xad b");
    expect_tokens(t, "", "");
    expect_tokens(t, " \t\n", "");
    expect_tokens(t, "...", ". . .");
    expect_tokens(t, "qqq", "[UNK]");
    wordpiece_free(t);

    wordpiece_tokenizer *nocjk = tiny(1, -1, 0, 512);
    expect_tokens(nocjk, "\xe4\xb8\xad\xe6\x96\x87", "[UNK]"); /* 中 then ##文: not in vocab */
    wordpiece_free(nocjk);
}

Test(tokenizer, case_and_accents)
{
    wordpiece_tokenizer *u = tiny(1, -1, 1, 512);
    expect_tokens(u, "Caf\xc3\xa9", "cafe");
    expect_tokens(u, "CAFE\xcc\x81", "cafe"); /* E + combining acute */
    expect_tokens(u, "Hello", "hello");
    wordpiece_free(u);

    wordpiece_tokenizer *keep = tiny(1, 0, 1, 512);
    expect_tokens(keep, "Caf\xc3\xa9", "caf\xc3\xa9");
    expect_tokens(keep, "CAFE\xcc\x81", "caf\xc3\xa9"); /* NFC composes it */
    wordpiece_free(keep);

    wordpiece_tokenizer *cased = tiny(0, -1, 1, 512);
    expect_tokens(cased, "Hello hello", "Hello hello");
    expect_tokens(cased, "HELLO", "[UNK]");
    expect_tokens(cased, "caf\xc3\xa9", "caf\xc3\xa9");
    wordpiece_free(cased);

    wordpiece_tokenizer *cstrip = tiny(0, 1, 1, 512);
    expect_tokens(cstrip, "caf\xc3\xa9 Hello", "cafe Hello");
    wordpiece_free(cstrip);
}

Test(tokenizer, special_tokens_in_text)
{
    wordpiece_tokenizer *t = tiny(1, -1, 1, 512);
    expect_tokens(t, "a[MASK]b", "a [MASK] b");
    expect_tokens(t, " [SEP] ", "[SEP]");
    expect_tokens(t, "[[SEP]]", "[ [SEP] ]");
    expect_tokens(t, "[mask]", "[ [UNK] ]"); /* case-sensitive: lowercase is plain text */
    expect_tokens(t, "[CLS]hello[PAD]x[UNK]", "[CLS] hello [PAD] x [UNK]");
    wordpiece_free(t);
}

Test(tokenizer, encode_single_and_pair)
{
    wordpiece_tokenizer *t = tiny(1, -1, 1, 512);
    expect_encoding(t, "hello world", NULL, 0, (int[]){2, 8, 9, 3}, (int[]){0, 0, 0, 0}, 4);
    expect_encoding(t, "", NULL, 0, (int[]){2, 3}, (int[]){0, 0}, 2);
    expect_encoding(t, "hello", "world", 0, (int[]){2, 8, 3, 9, 3}, (int[]){0, 0, 0, 1, 1}, 5);
    expect_encoding(t, "hello", "", 0, (int[]){2, 8, 3, 3}, (int[]){0, 0, 0, 1}, 4);
    wordpiece_free(t);
}

Test(tokenizer, truncation)
{
    wordpiece_tokenizer *t = tiny(1, -1, 1, 5);
    /* Single: keep max_length - 2 tokens. */
    expect_encoding(t, "a a a a a", NULL, 4, (int[]){2, 16, 16, 3}, (int[]){0, 0, 0, 0}, 4);
    /* max_length 0: the model's maximum (5 here). */
    expect_encoding(t, "a a a a a", NULL, 0, (int[]){2, 16, 16, 16, 3}, (int[]){0, 0, 0, 0, 0}, 5);
    /* Too short to remove enough (HF only logs an error): nothing is removed. */
    expect_encoding(t, "a a a", NULL, 2, (int[]){2, 16, 16, 16, 3}, (int[]){0, 0, 0, 0, 0}, 5);
    /* Pair, longest_first: 5 + 3 + 3 specials = 11 > 8, remove 3: first the difference
     * (2) from the longer, then the rest (1) split as HF does: ids_to_move = 2 + 1//2 = 2,
     * pair_ids_to_move = 1 - 1//2 = 1 -> 3 + 2 tokens. */
    expect_encoding(t, "a a a a a", "b b b", 8, (int[]){2, 16, 16, 16, 3, 18, 18, 3},
                    (int[]){0, 0, 0, 0, 0, 1, 1, 1}, 8);
    /* Equal lengths 3 + 3, remove 3: first 0 + 3//2 = 1, second 2. */
    expect_encoding(t, "a a a", "b b b", 6, (int[]){2, 16, 16, 3, 18, 3},
                    (int[]){0, 0, 0, 0, 1, 1}, 6);
    /* Removing more than there is leaves both empty: [CLS] [SEP] [SEP] (longer than 2). */
    expect_encoding(t, "a a", "b", 2, (int[]){2, 3, 3}, (int[]){0, 0, 1}, 3);
    wordpiece_free(t);
}

Test(tokenizer, invalid_utf8)
{
    wordpiece_tokenizer *t = tiny(1, -1, 1, 512);
    struct {
        const char *text;
        const char *where;
    } bad[] = {
        {"ab\xff" "cd", "byte offset 2"},
        {"abc\xe2\x82", "byte offset 3"},         /* truncated */
        {"\xed\xa0\x80", "byte offset 0"},        /* surrogate */
        {"x\xc0\xaf", "byte offset 1"},           /* overlong */
        {"xy\xf4\x90\x80\x80", "byte offset 2"},  /* above U+10FFFF */
        {"\x80", "byte offset 0"},                /* lone continuation */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tok_encoding e;
        sherl_status st = wordpiece_encode(t, bad[i].text, NULL, 0, &e);
        cr_expect_eq(st.code, SHERL_EINVAL, "case %zu: %s", i, st.msg);
        cr_expect(strstr(st.msg, bad[i].where) != NULL, "case %zu: message \"%s\" lacks \"%s\"", i,
                  st.msg, bad[i].where);
        cr_expect_null(e.input_ids);
        st = wordpiece_encode(t, "fine", bad[i].text, 0, &e);
        cr_expect_eq(st.code, SHERL_EINVAL);
        cr_expect(strstr(st.msg, "second text") != NULL, "%s", st.msg);
    }
    tok_encoding e;
    cr_expect_eq(wordpiece_encode(t, NULL, NULL, 0, &e).code, SHERL_EINVAL);
    char **toks;
    int n;
    cr_expect_eq(wordpiece_tokenize(t, "\xfe", &toks, &n).code, SHERL_EINVAL);
    wordpiece_free(t);
}

Test(tokenizer, vocab_file_errors, .timeout = 30)
{
    char dir[512], path[600];
    work_dir(dir, sizeof dir, "vocab_errors");
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    wordpiece_tokenizer *t = NULL;

    sherl_status st = wordpiece_load_vocab(&t, path, NULL);
    cr_expect_eq(st.code, SHERL_EIO, "missing file: %s", st.msg);
    cr_expect(strstr(st.msg, path) != NULL, "message names the path: %s", st.msg);
    cr_expect_null(t);
    st = wordpiece_load(&t, dir);
    cr_expect_eq(st.code, SHERL_EIO, "%s", st.msg);
    cr_expect(strstr(st.msg, "vocab.txt") != NULL, "%s", st.msg);

    write_file(path, "", 0);
    st = wordpiece_load_vocab(&t, path, NULL);
    cr_expect_eq(st.code, SHERL_EFORMAT, "empty vocab: %s", st.msg);
    cr_expect(strstr(st.msg, "empty") != NULL, "%s", st.msg);

    const char *nomask = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n";
    write_file(path, nomask, strlen(nomask));
    st = wordpiece_load_vocab(&t, path, NULL);
    cr_expect_eq(st.code, SHERL_EFORMAT, "%s", st.msg);
    cr_expect(strstr(st.msg, "[MASK]") != NULL, "%s", st.msg);

    const char *badutf = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nab\xff\n";
    write_file(path, badutf, strlen(badutf));
    st = wordpiece_load_vocab(&t, path, NULL);
    cr_expect_eq(st.code, SHERL_EFORMAT, "%s", st.msg);
    cr_expect(strstr(st.msg, "line 6") != NULL, "%s", st.msg);

    wordpiece_options o = {1, 7, 1, 512};
    write_file(path, nomask, strlen(nomask));
    cr_expect_eq(wordpiece_load_vocab(&t, path, &o).code, SHERL_EINVAL);
    cr_expect_null(t);

    /* FIFOs nobody writes, as the vocabulary and as an optional config: errors, not a wait
     * for a writer */
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", dir);
    unlink(path), unlink(cfg);
    cr_assert_eq(mkfifo(path, 0600), 0, "mkfifo: %s", strerror(errno));
    st = wordpiece_load(&t, dir);
    cr_expect_eq(st.code, SHERL_EFORMAT, "FIFO vocab: %s", st.msg);
    cr_expect(strstr(st.msg, "vocab.txt") && strstr(st.msg, "empty"), "%s", st.msg);
    unlink(path);
    write_file(path, nomask, strlen(nomask));
    cr_assert_eq(mkfifo(cfg, 0600), 0, "mkfifo: %s", strerror(errno));
    st = wordpiece_load(&t, dir);
    cr_expect_eq(st.code, SHERL_EFORMAT, "FIFO config: %s", st.msg);
    cr_expect(strstr(st.msg, "tokenizer_config.json") != NULL, "%s", st.msg);
    cr_expect_null(t);
    unlink(cfg);
}

Test(tokenizer, vocab_lines_like_python)
{
    char dir[512], path[600];
    work_dir(dir, sizeof dir, "vocab_lines");
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    /* \r\n, \r and \n all end lines; a later duplicate wins; the last line has no newline. */
    const char *v = "[PAD]\r\n[UNK]\r[CLS]\n[SEP]\r\nx\n[MASK]\n\nx\r\nlast";
    write_file(path, v, strlen(v));
    wordpiece_tokenizer *t = NULL;
    sherl_status st = wordpiece_load_vocab(&t, path, NULL);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_expect_eq(wordpiece_vocab_size(t), 9);
    cr_expect_eq(wordpiece_pad_id(t), 0);
    expect_encoding(t, "x last [MASK]", NULL, 0, (int[]){2, 7, 8, 5, 3}, (int[]){0, 0, 0, 0, 0},
                    5);
    wordpiece_free(t);
}

Test(tokenizer, config_file)
{
    char dir[512], path[600];
    work_dir(dir, sizeof dir, "config");
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    for (int i = 0; i < TINY_N; i++)
        fprintf(f, "%s\n", tiny_vocab[i]);
    fclose(f);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    wordpiece_tokenizer *t = NULL;

    /* No config: the defaults. */
    sherl_status st = wordpiece_load(&t, dir);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    const wordpiece_options *o = wordpiece_get_options(t);
    cr_expect(o->do_lower_case == 1 && o->strip_accents == -1 && o->tokenize_chinese_chars == 1 &&
              o->model_max_length == 512);
    wordpiece_free(t);

    const char *c1 = "{\"do_lower_case\": false, \"strip_accents\": true, "
                     "\"tokenize_chinese_chars\": false, "
                     "\"model_max_length\": 1000000000000000019884624838656, "
                     "\"unk_token\": {\"__type\": \"AddedToken\", \"content\": \"[UNK]\"}, "
                     "\"tokenizer_class\": \"BertTokenizer\"}";
    write_file(path, c1, strlen(c1));
    st = wordpiece_load(&t, dir);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    o = wordpiece_get_options(t);
    cr_expect(o->do_lower_case == 0 && o->strip_accents == 1 && o->tokenize_chinese_chars == 0 &&
                  o->model_max_length == 512,
              "got %d %d %d %d", o->do_lower_case, o->strip_accents, o->tokenize_chinese_chars,
              o->model_max_length);
    wordpiece_free(t);

    const char *c2 = "{\"strip_accents\": null, \"model_max_length\": 128}";
    write_file(path, c2, strlen(c2));
    st = wordpiece_load(&t, dir);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    o = wordpiece_get_options(t);
    cr_expect(o->do_lower_case == 1 && o->strip_accents == -1 && o->model_max_length == 128);
    wordpiece_free(t);

    struct {
        const char *json;
        sherl_code code;
    } bad[] = {
        {"{", SHERL_EFORMAT},
        {"[1, 2]", SHERL_EFORMAT},
        {"{\"do_lower_case\": \"yes\"}", SHERL_EFORMAT},
        {"{\"model_max_length\": \"512\"}", SHERL_EFORMAT},
        {"{\"unk_token\": \"<unk>\"}", SHERL_EUNSUPPORTED},
        {"{\"additional_special_tokens\": [\"<x>\"]}", SHERL_EUNSUPPORTED},
        {"{\"do_basic_tokenize\": false}", SHERL_EUNSUPPORTED},
        {"{\"never_split\": [\"foo\"]}", SHERL_EUNSUPPORTED},
        {"{\"added_tokens_decoder\": {\"30522\": {\"content\": \"<new>\"}}}", SHERL_EUNSUPPORTED},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(path, bad[i].json, strlen(bad[i].json));
        st = wordpiece_load(&t, dir);
        cr_expect_eq(st.code, bad[i].code, "%s: %s", bad[i].json, st.msg);
        cr_expect(strstr(st.msg, "tokenizer_config.json") != NULL, "%s", st.msg);
        cr_expect_null(t);
    }
}

Test(tokenizer, real_minilm_vocab)
{
    char probe[1024];
    minilm_file(probe, sizeof probe, "vocab.txt");
    wordpiece_tokenizer *t = NULL;
    sherl_status st = wordpiece_load(&t, SHERL_MINILM_DIR);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_expect_eq(wordpiece_vocab_size(t), 30522);
    cr_expect_eq(wordpiece_pad_id(t), 0);
    const wordpiece_options *o = wordpiece_get_options(t);
    cr_expect(o->do_lower_case == 1 && o->strip_accents == -1 && o->model_max_length == 512);
    /* From transformers 4.40.2: tokenizer("Hello, world! unaffable") */
    expect_encoding(t, "Hello, world! unaffable", NULL, 0,
                    (int[]){101, 7592, 1010, 2088, 999, 14477, 20961, 3468, 102},
                    (int[]){0, 0, 0, 0, 0, 0, 0, 0, 0}, 9);
    wordpiece_free(t);
}

/* Arbitrary bytes never crash: the result is a valid encoding or SHERL_EINVAL. */
Test(tokenizer, robust_against_arbitrary_input, .timeout = 120)
{
    wordpiece_tokenizer *ts[3] = {tiny(1, -1, 1, 16), tiny(0, 1, 0, 512), tiny(0, 0, 1, 512)};
    uint64_t s = 0x9E3779B97F4A7C15ULL;
#define NEXT() (s ^= s << 13, s ^= s >> 7, s ^= s << 17, s)
    char buf[300];
    int ok = 0, inval = 0;
    for (int iter = 0; iter < 30000; iter++) {
        int len = (int)(NEXT() % 200);
        int mode = iter % 3;
        int k = 0;
        while (k < len) {
            uint64_t r = NEXT();
            if (mode == 0) { /* raw bytes, no NUL */
                buf[k++] = (char)(r % 255 + 1);
            } else { /* valid UTF-8 from anywhere in Unicode, biased to interesting parts */
                uint32_t c;
                switch (r % 6) {
                case 0: c = (uint32_t)(r >> 8) % 0x80; break;
                case 1: c = 0x300 + (uint32_t)(r >> 8) % 0x70; break;
                case 2: c = 0x4E00 + (uint32_t)(r >> 8) % 0x100; break;
                case 3: c = "[]CLSEPMAK#"[(r >> 8) % 11]; break;
                default: c = (uint32_t)(r >> 8) % 0x110000; break;
                }
                if (c == 0 || (c >= 0xD800 && c <= 0xDFFF))
                    c = 'a';
                if (k + 4 >= (int)sizeof buf - 1)
                    break;
                if (c < 0x80) {
                    buf[k++] = (char)c;
                } else if (c < 0x800) {
                    buf[k++] = (char)(0xC0 | (c >> 6));
                    buf[k++] = (char)(0x80 | (c & 0x3F));
                } else if (c < 0x10000) {
                    buf[k++] = (char)(0xE0 | (c >> 12));
                    buf[k++] = (char)(0x80 | ((c >> 6) & 0x3F));
                    buf[k++] = (char)(0x80 | (c & 0x3F));
                } else {
                    buf[k++] = (char)(0xF0 | (c >> 18));
                    buf[k++] = (char)(0x80 | ((c >> 12) & 0x3F));
                    buf[k++] = (char)(0x80 | ((c >> 6) & 0x3F));
                    buf[k++] = (char)(0x80 | (c & 0x3F));
                }
            }
        }
        buf[k] = '\0';
        wordpiece_tokenizer *t = ts[(iter / 3) % 3];
        tok_encoding e;
        sherl_status st = wordpiece_encode(t, buf, (iter & 4) ? buf : NULL,
                                           (int)(NEXT() % 20), &e);
        if (mode != 0)
            cr_assert_eq(st.code, SHERL_OK, "valid UTF-8 refused: %s", st.msg);
        if (st.code == SHERL_OK) {
            ok++;
            cr_assert(e.len >= 2);
            for (int i = 0; i < e.len; i++)
                cr_assert(e.input_ids[i] >= 0 && e.input_ids[i] < TINY_N);
            tok_encoding_free(&e);
        } else {
            cr_assert_eq(st.code, SHERL_EINVAL, "%s", st.msg);
            inval++;
        }
    }
    cr_expect(ok > 0 && inval > 0);
    for (int i = 0; i < 3; i++)
        wordpiece_free(ts[i]);
#undef NEXT
}

#else /* SHERL_TOKENIZER_PARITY */

/* ---------------------------------------------------------------------------------- */
/* Parity with Hugging Face transformers 4.40.2 (files from tokenizer_reference.py)    */

#define MAX_CONFIGS 8
#define SHOW_MISMATCHES 10

static FILE *open_work(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", SHERL_TEST_WORK, name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s missing: the fixture fixture_tokenizer_oracle "
                          "(tests/oracle/tokenizer_reference.py) writes it", path);
    return f;
}

/* Undoes tokenizer_reference.py's escape() in place. */
static void unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r;) {
        if (r[0] == '\\' && r[1] == '\\') {
            *w++ = '\\';
            r += 2;
        } else if (r[0] == '\\' && r[1] == 'x') {
            char hex[3] = {r[2], r[3], 0};
            *w++ = (char)strtol(hex, NULL, 16);
            r += 4;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
}

/* Splits line at tabs into at most n fields; returns the count. */
static int split_tabs(char *line, char **fields, int n)
{
    int k = 0;
    fields[k++] = line;
    for (char *p = line; *p && k < n; p++) {
        if (*p == '\t') {
            *p = '\0';
            fields[k++] = p + 1;
        }
    }
    return k;
}

typedef struct {
    char **tok;
    int n;
} id_names;

static id_names load_names(void)
{
    id_names v = {NULL, 0};
    char path[1024];
    snprintf(path, sizeof path, "%s/vocab.txt", SHERL_MINILM_DIR);
    FILE *f = fopen(path, "rb");
    if (!f)
        return v;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        v.tok = realloc(v.tok, (size_t)(v.n + 1) * sizeof *v.tok);
        v.tok[v.n++] = strdup(line);
    }
    free(line);
    fclose(f);
    return v;
}

static void append_ids(char *out, size_t cap, const id_names *names, const int32_t *ids, int n)
{
    size_t len = strlen(out);
    for (int i = 0; i < n && len + 40 < cap; i++) {
        const char *name = ids[i] >= 0 && ids[i] < names->n ? names->tok[ids[i]] : "?";
        len += (size_t)snprintf(out + len, cap - len, "%s%d(%s)", i ? " " : "", ids[i], name);
    }
}

Test(tokenizer_parity, transformers_bert_tokenizer, .timeout = 900)
{
    FILE *f = open_work("tokenizer_cases.txt");
    struct {
        char name[64];
        wordpiece_tokenizer *tok;
        long compared, mismatched;
    } cfg[MAX_CONFIGS];
    int ncfg = 0;
    id_names names = load_names();
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long total = 0, mismatches = 0, lineno = 0;
    int32_t *ids = NULL;
    size_t ids_cap = 0;
    double enc_seconds = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (len > 0 && line[len - 1] == '\n')
            line[--len] = '\0';
        if (line[0] == '#' || line[0] == '\0')
            continue;
        if (strncmp(line, "@config ", 8) == 0) {
            cr_assert_lt(ncfg, MAX_CONFIGS);
            char how[16];
            int lower = 1, strip = -1, cjk = 1;
            int got = sscanf(line + 8, "%63s %15s %d %d %d", cfg[ncfg].name, how, &lower, &strip,
                             &cjk);
            cr_assert(got >= 2, "bad line %ld: %s", lineno, line);
            sherl_status st;
            cfg[ncfg].tok = NULL;
            if (strcmp(how, "dir") == 0) {
                st = wordpiece_load(&cfg[ncfg].tok, SHERL_MINILM_DIR);
            } else {
                char path[1024];
                snprintf(path, sizeof path, "%s/vocab.txt", SHERL_MINILM_DIR);
                wordpiece_options o = {lower, strip, cjk, 512};
                st = wordpiece_load_vocab(&cfg[ncfg].tok, path, &o);
            }
            cr_assert_eq(st.code, SHERL_OK, "config %s: %s", cfg[ncfg].name, st.msg);
            cfg[ncfg].compared = cfg[ncfg].mismatched = 0;
            ncfg++;
            continue;
        }
        char *fld[8];
        cr_assert_eq(split_tabs(line, fld, 8), 8, "bad line %ld", lineno);
        int c = 0;
        while (c < ncfg && strcmp(cfg[c].name, fld[0]) != 0)
            c++;
        cr_assert_lt(c, ncfg, "line %ld: unknown config %s", lineno, fld[0]);
        int max_len = atoi(fld[1]);
        int pair = atoi(fld[2]) == 2;
        char *a = fld[3], *b = fld[4];
        unescape(a);
        unescape(b);
        /* expected ids */
        size_t nexp = 0;
        for (char *p = fld[5]; *p;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p)
                break;
            if (nexp == ids_cap) {
                ids_cap = ids_cap ? ids_cap * 2 : 1024;
                ids = realloc(ids, ids_cap * sizeof *ids);
                cr_assert_not_null(ids);
            }
            ids[nexp++] = (int32_t)v;
            p = end;
        }
        const char *types = fld[6], *mask = fld[7];

        tok_encoding e;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        sherl_status st = wordpiece_encode(cfg[c].tok, a, pair ? b : NULL, max_len, &e);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        enc_seconds += (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        total++;
        cfg[c].compared++;
        int same = st.code == SHERL_OK && (size_t)e.len == nexp && strlen(types) == nexp &&
                   strlen(mask) == nexp;
        for (size_t i = 0; same && i < nexp; i++)
            same = e.input_ids[i] == ids[i] && e.token_type_ids[i] == types[i] - '0' &&
                   e.attention_mask[i] == mask[i] - '0';
        if (!same) {
            mismatches++;
            cfg[c].mismatched++;
            if (mismatches <= SHOW_MISMATCHES) {
                static char exp[16384], got[16384];
                exp[0] = got[0] = '\0';
                append_ids(exp, sizeof exp, &names, ids, (int)nexp);
                if (st.code == SHERL_OK)
                    append_ids(got, sizeof got, &names, e.input_ids, e.len);
                else
                    snprintf(got, sizeof got, "error: %s", st.msg);
                fprintf(stderr,
                        "MISMATCH %ld (cases line %ld, config %s, max_length %d)\n"
                        "  text a:   \"%.400s\"\n  text b:   %s%.400s%s\n"
                        "  expected: %s\n            types %s\n"
                        "  got:      %s\n",
                        mismatches, lineno, cfg[c].name, max_len, a, pair ? "\"" : "",
                        pair ? b : "(none)", pair ? "\"" : "", exp, types, got);
                if (st.code == SHERL_OK) {
                    fprintf(stderr, "            types ");
                    for (int i = 0; i < e.len; i++)
                        fputc('0' + e.token_type_ids[i], stderr);
                    fputc('\n', stderr);
                }
            }
        }
        if (st.code == SHERL_OK)
            tok_encoding_free(&e);
    }
    free(line);
    free(ids);
    fclose(f);
    fprintf(stderr, "tokenizer parity: %ld encodings compared against transformers "
                    "BertTokenizer in %.2f s of encoding (%.1f us each); %ld mismatched\n",
            total, enc_seconds, total ? 1e6 * enc_seconds / (double)total : 0.0, mismatches);
    for (int c = 0; c < ncfg; c++) {
        fprintf(stderr, "  %-22s %7ld compared, %ld mismatched\n", cfg[c].name, cfg[c].compared,
                cfg[c].mismatched);
        wordpiece_free(cfg[c].tok);
    }
    for (int i = 0; i < names.n; i++)
        free(names.tok[i]);
    free(names.tok);
    cr_expect_gt(total, 100000, "expected every WordNet gloss, got only %ld cases", total);
    cr_expect_eq(mismatches, 0, "%ld of %ld encodings differ from transformers (first ones above)",
                 mismatches, total);
}

/* "A.B.C" hex code points -> array; returns the count. */
static size_t parse_seq(const char *s, uint32_t *out, size_t cap)
{
    size_t n = 0;
    while (*s && *s != ' ' && n < cap) {
        char *end;
        unsigned long v = strtoul(s, &end, 16);
        if (end == s)
            break;
        out[n++] = (uint32_t)v;
        s = end;
        if (*s == '.')
            s++;
    }
    return n;
}

static int same_seq(const uint32_t *a, size_t na, const uint32_t *b, size_t nb)
{
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

/* The Unicode facts the tokenizer uses, for every code point, against Python's. */
Test(tokenizer_parity, unicode_properties, .timeout = 300)
{
    FILE *f = open_work("tokenizer_unicode.txt");
    char line[512];
    long checked = 0, bad = 0;
    uint32_t next = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#')
            continue;
        uint32_t lo, hi, cp;
        char cat[8], low[64], nfd[256], nfc[256];
        int sp;
        uint32_t elow[4], enfd[32], enfc[32];
        size_t nlow = 0, nnfd = 0, nnfc = 0;
        if (line[0] == 'R') {
            cr_assert_eq(sscanf(line, "R %x %x %7s %d", &lo, &hi, cat, &sp), 4, "%s", line);
        } else {
            cr_assert_eq(sscanf(line, "C %x %7s %d %63s %255s %255s", &lo, cat, &sp, low, nfd, nfc),
                         6, "%s", line);
            hi = lo;
            nlow = parse_seq(low, elow, 4);
            nnfd = parse_seq(nfd, enfd, 32);
            nnfc = parse_seq(nfc, enfc, 32);
        }
        if (next == 0xD800)
            next = 0xE000;
        cr_assert_eq(lo, next, "gap in tokenizer_unicode.txt at %X", next);
        next = hi + 1;
        for (cp = lo; cp <= hi; cp++) {
            checked++;
            wordpiece_char_info ci;
            wordpiece_unicode_char_info(cp, &ci);
            int ok = strcmp(ci.category, cat) == 0 && ci.is_space == sp;
            uint32_t *gnfd = NULL, *gnfc = NULL;
            size_t ngnfd = 0, ngnfc = 0;
            cr_assert_eq(wordpiece_unicode_normalize(&cp, 1, 1, &gnfd, &ngnfd).code, SHERL_OK);
            cr_assert_eq(wordpiece_unicode_normalize(&cp, 1, 0, &gnfc, &ngnfc).code, SHERL_OK);
            if (line[0] == 'R') {
                ok = ok && ci.n_lower == 1 && ci.lower[0] == cp && same_seq(gnfd, ngnfd, &cp, 1) &&
                     same_seq(gnfc, ngnfc, &cp, 1);
            } else {
                ok = ok && same_seq(ci.lower, (size_t)ci.n_lower, elow, nlow) &&
                     same_seq(gnfd, ngnfd, enfd, nnfd) && same_seq(gnfc, ngnfc, enfc, nnfc);
            }
            free(gnfd);
            free(gnfc);
            if (!ok && ++bad <= 20)
                fprintf(stderr, "U+%04X: Python says %s space=%d (line %s), got %s space=%d lower=%X\n",
                        cp, cat, sp, line, ci.category, ci.is_space, ci.lower[0]);
        }
    }
    fclose(f);
    cr_expect_eq(next, 0x110000u, "tokenizer_unicode.txt ends at %X", next);
    fprintf(stderr, "unicode properties: %ld code points checked, %ld differ\n", checked, bad);
    cr_expect_eq(bad, 0);
}

Test(tokenizer_parity, normalization_sequences, .timeout = 300)
{
    FILE *f = open_work("tokenizer_normalize.txt");
    char line[2048];
    long checked = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        uint32_t in[64], enfc[256], enfd[256];
        char *p1 = strchr(line, ' ');
        cr_assert_not_null(p1);
        char *p2 = strchr(p1 + 1, ' ');
        cr_assert_not_null(p2);
        size_t n = parse_seq(line, in, 64);
        size_t nc = parse_seq(p1 + 1, enfc, 256);
        size_t nd = parse_seq(p2 + 1, enfd, 256);
        uint32_t *gc, *gd;
        size_t ngc, ngd;
        cr_assert_eq(wordpiece_unicode_normalize(in, n, 0, &gc, &ngc).code, SHERL_OK);
        cr_assert_eq(wordpiece_unicode_normalize(in, n, 1, &gd, &ngd).code, SHERL_OK);
        checked++;
        if (!same_seq(gc, ngc, enfc, nc) || !same_seq(gd, ngd, enfd, nd)) {
            if (++bad <= 10)
                fprintf(stderr, "normalization differs for %s", line);
        }
        free(gc);
        free(gd);
    }
    fclose(f);
    fprintf(stderr, "normalization: %ld sequences checked (NFC and NFD), %ld differ\n", checked,
            bad);
    cr_expect_gt(checked, 1000);
    cr_expect_eq(bad, 0);
}

#endif /* SHERL_TOKENIZER_PARITY */
