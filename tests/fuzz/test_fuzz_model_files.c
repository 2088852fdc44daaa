/* Fuzz-style test of the two model-file parsers (safetensors, config.json): deterministic,
 * seeded mutations of a valid small safetensors image and of the real MiniLM config.json.
 *
 * Every mutated input is copied into a heap block of exactly its size, so under ASan any read
 * past the end is caught. For each input the parser must either return an error (EFORMAT or
 * EUNSUPPORTED, with the label in the message and nothing left allocated) or succeed with a
 * consistent result: every tensor inside the buffer, sizes matching shapes, the table sorted
 * and searchable, every convertible tensor readable. Mutations that always break the input
 * (truncations, wrong length fields, NUL bytes, duplicated keys, deep nesting) must fail. */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_config.h"
#include "safetensors.h"

#ifndef SHERL_MINILM_DIR
#define SHERL_MINILM_DIR ""
#endif

/* ---------------------------------------------------------------------------------------- */
/* deterministic randomness and a growable byte string                                         */

static uint64_t g_rng = 0x5eed5eed12345678ull;

static uint64_t rnd(void)
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545F4914F6CDD1Dull;
}

static size_t rnd_below(size_t n)
{
    return n ? (size_t)(rnd() % n) : 0;
}

typedef struct {
    uint8_t *p;
    size_t len, cap;
} bytes;

static void b_reserve(bytes *b, size_t n)
{
    if (n <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < n)
        cap *= 2;
    b->p = realloc(b->p, cap);
    cr_assert_not_null(b->p);
    b->cap = cap;
}

static void b_set(bytes *b, const void *s, size_t n)
{
    b_reserve(b, n);
    memcpy(b->p, s, n);
    b->len = n;
}

static void b_insert(bytes *b, size_t pos, const void *s, size_t n)
{
    b_reserve(b, b->len + n);
    memmove(b->p + pos + n, b->p + pos, b->len - pos);
    memcpy(b->p + pos, s, n);
    b->len += n;
}

static void b_erase(bytes *b, size_t pos, size_t n)
{
    memmove(b->p + pos, b->p + pos + n, b->len - pos - n);
    b->len -= n;
}

/* Tokens that tend to produce interesting JSON. */
static const char *const k_tokens[] = {
    "\"", "{", "}", "[", "]", ",", ":", "9", "-", " ", "\\", "\\u0000", "0", "-1", "1e999",
    "3.5", "null", "true", "[]", "{}", "\"\"", "9007199254740993", "18446744073709551616",
    "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"F32\"", "\"F16\"", "\"I64\"", "\"X9\"",
    "\"__metadata__\"", "[0,4]", "[4,0]", "[1,1,1,1,1,1,1,1,1]", "\xff", "\xc3", "\xe2\x82\xac",
    "\"hidden_size\":", "\"model_type\":\"bert\",", "\"vocab_size\":0,",
};
#define N_TOKENS (sizeof k_tokens / sizeof k_tokens[0])
static const uint8_t k_bytes[] = {'"', '{', '}', '[', ']', ',', ':', '9', '-', '0', ' ',
                                  '\\', 0xff, 0x00, 0x80, 0x7f, '\n', 'e', '.'};

/* 1 to 8 random edits: bit flips, byte replacements, token inserts, deletions, duplications. */
static void mutate(bytes *b)
{
    int ops = 1 + (int)rnd_below(8);
    for (int k = 0; k < ops; k++) {
        size_t pos = rnd_below(b->len + 1);
        switch (rnd_below(6)) {
        case 0:
            if (b->len)
                b->p[rnd_below(b->len)] ^= (uint8_t)(1u << rnd_below(8));
            break;
        case 1:
            if (b->len)
                b->p[rnd_below(b->len)] = k_bytes[rnd_below(sizeof k_bytes)];
            break;
        case 2: {
            const char *t = k_tokens[rnd_below(N_TOKENS)];
            b_insert(b, pos, t, strlen(t));
            break;
        }
        case 3:
            if (pos < b->len)
                b_erase(b, pos, 1 + rnd_below(b->len - pos < 16 ? b->len - pos : 16));
            break;
        case 4:
            if (pos < b->len && b->len < 65536) { /* duplicate a range (keys, entries) */
                size_t n = 1 + rnd_below(b->len - pos < 64 ? b->len - pos : 64);
                uint8_t tmp[64];
                memcpy(tmp, b->p + pos, n);
                b_insert(b, rnd_below(b->len + 1), tmp, n);
            }
            break;
        default:
            if (b->len)
                b->p[rnd_below(b->len)] = (uint8_t)rnd();
            break;
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* safetensors                                                                                 */

static const char *k_header =
    "{\"__metadata__\":{\"format\":\"pt\",\"k\":\"v\"},"
    "\"emb.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[32,40]},"
    "\"ids\":{\"dtype\":\"I64\",\"shape\":[1,3],\"data_offsets\":[40,64]},"
    "\"mask\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[64,67]},"
    "\"u\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[67,68]},"
    "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[68,72]}}";
#define DATA_SIZE 72

static int g_ok, g_err;

/* header + data as a file image with length field `declared`. */
static void build_image(bytes *img, const uint8_t *hdr, size_t hlen, uint64_t declared,
                        size_t data_size)
{
    b_reserve(img, 8 + hlen + data_size);
    for (int i = 0; i < 8; i++)
        img->p[i] = (uint8_t)(declared >> (8 * i));
    memcpy(img->p + 8, hdr, hlen);
    for (size_t i = 0; i < data_size; i++)
        img->p[8 + hlen + i] = (uint8_t)(0xa5 ^ (i * 29));
    img->len = 8 + hlen + data_size;
}

static void base_image(bytes *img)
{
    build_image(img, (const uint8_t *)k_header, strlen(k_header), strlen(k_header), DATA_SIZE);
}

static void check_consistent(const safetensors_file *f, const uint8_t *buf, size_t len)
{
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    cr_assert_leq(hlen, len - 8);
    const uint8_t *data = buf + 8 + hlen, *end = buf + len;
    cr_assert_geq(f->n_tensors, 0);
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        cr_assert_not_null(t->name);
        cr_assert_gt(strlen(t->name), 0);
        cr_assert(t->ndim >= 0 && t->ndim <= SAFETENSORS_MAX_DIMS);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            cr_assert_geq(t->shape[d], 0);
            numel *= t->shape[d];
        }
        cr_assert_eq(numel, t->numel);
        cr_assert_eq(t->nbytes, (size_t)numel * st_dtype_size(t->dtype));
        cr_assert(t->data >= data && t->data <= end && t->nbytes <= (size_t)(end - t->data),
                  "tensor '%s' outside the buffer", t->name);
        if (i > 0)
            cr_assert_lt(strcmp(f->tensors[i - 1].name, t->name), 0, "table not sorted/unique");
        cr_assert_eq(safetensors_find(f, t->name), t);
        for (int j = 0; j < i; j++) {
            const st_tensor *u = &f->tensors[j];
            if (t->nbytes && u->nbytes)
                cr_assert(t->data >= u->data + u->nbytes || u->data >= t->data + t->nbytes,
                          "'%s' and '%s' overlap", t->name, u->name);
        }
        if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) {
            float *dst = malloc(t->numel ? (size_t)t->numel * sizeof(float) : 1);
            sherl_status st = safetensors_read_f32(f, t->name, dst, t->ndim, t->shape);
            cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
            free(dst);
        } else {
            float x;
            sherl_status st = safetensors_read_f32(f, t->name, &x, t->ndim, t->shape);
            cr_assert_eq(st.code, SHERL_EUNSUPPORTED);
        }
    }
    for (int i = 0; i < f->n_metadata; i++)
        cr_assert_eq(safetensors_metadata(f, f->metadata[2 * i]), f->metadata[2 * i + 1]);
}

/* Parses an exact-size heap copy; returns the code after checking the result. */
static sherl_code st_try(const uint8_t *src, size_t len)
{
    uint8_t *b = malloc(len ? len : 1);
    cr_assert_not_null(b);
    if (len)
        memcpy(b, src, len);
    safetensors_file f;
    sherl_status st = safetensors_parse(&f, b, len, "fuzz.safetensors");
    if (st.code == SHERL_OK) {
        check_consistent(&f, b, len);
        safetensors_close(&f);
        g_ok++;
    } else {
        cr_assert(st.code == SHERL_EFORMAT || st.code == SHERL_EUNSUPPORTED, "code %s: %s",
                  sherl_code_name(st.code), st.msg);
        cr_assert(strncmp(st.msg, "fuzz.safetensors: ", 18) == 0, "%s", st.msg);
        cr_assert(f.n_tensors == 0 && f.tensors == NULL && f.metadata == NULL);
        g_err++;
    }
    free(b);
    return st.code;
}

static void st_must_fail(const uint8_t *src, size_t len, const char *what)
{
    sherl_code c = st_try(src, len);
    cr_assert_neq(c, SHERL_OK, "%s: parsed a broken file", what);
}

Test(fuzz_safetensors, base_image_is_valid)
{
    bytes img = {0};
    base_image(&img);
    cr_assert_eq(st_try(img.p, img.len), SHERL_OK);
    free(img.p);
}

Test(fuzz_safetensors, every_truncation)
{
    bytes img = {0}, h = {0};
    base_image(&img);
    for (size_t l = 0; l < img.len; l++)
        st_must_fail(img.p, l, "truncated file");
    /* header cut at every length, with the length field telling the truth about the cut */
    size_t hl = strlen(k_header);
    for (size_t l = 0; l < hl; l++) {
        build_image(&h, (const uint8_t *)k_header, l, l, DATA_SIZE);
        st_must_fail(h.p, h.len, "truncated header");
    }
    cr_log_info("truncations: %d rejected", g_err);
    free(img.p);
    free(h.p);
}

Test(fuzz_safetensors, header_length_field)
{
    bytes img = {0};
    base_image(&img);
    uint64_t n = strlen(k_header), len = img.len;
    const uint64_t vals[] = {0, 1, 2, 7, 8, n - 1, n + 1, n + 8, len - 8 - DATA_SIZE + 1, len - 8,
                             len - 7, len, len + 1, SAFETENSORS_MAX_HEADER,
                             (uint64_t)SAFETENSORS_MAX_HEADER + 1, 0xffffffffull, 1ull << 32,
                             1ull << 63, ~0ull, ~0ull - 7, n | (1ull << 40)};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        for (int k = 0; k < 8; k++)
            img.p[k] = (uint8_t)(vals[i] >> (8 * k));
        st_must_fail(img.p, img.len, "wrong header length");
    }
    free(img.p);
}

Test(fuzz_safetensors, every_bit_flip)
{
    bytes img = {0}, m = {0};
    base_image(&img);
    size_t region = 8 + strlen(k_header) + DATA_SIZE;
    for (size_t i = 0; i < region; i++)
        for (int bit = 0; bit < 8; bit++) {
            b_set(&m, img.p, img.len);
            m.p[i] ^= (uint8_t)(1u << bit);
            st_try(m.p, m.len);
        }
    cr_log_info("bit flips: %d ok, %d rejected", g_ok, g_err);
    cr_assert_gt(g_err, 0);
    free(img.p);
    free(m.p);
}

Test(fuzz_safetensors, every_byte_replacement)
{
    bytes img = {0}, m = {0};
    base_image(&img);
    size_t hl = strlen(k_header);
    for (size_t i = 8; i < 8 + hl; i++)
        for (size_t v = 0; v < sizeof k_bytes; v++) {
            if (img.p[i] == k_bytes[v])
                continue;
            b_set(&m, img.p, img.len);
            m.p[i] = k_bytes[v];
            sherl_code c = st_try(m.p, m.len);
            /* raw NUL, DEL and stray 0xff / 0x80 are never valid in the JSON text */
            if (k_bytes[v] == 0x00 || k_bytes[v] == 0xff || k_bytes[v] == 0x80 || k_bytes[v] == 0x7f)
                cr_assert_neq(c, SHERL_OK, "byte %zu set to 0x%02x parsed", i, k_bytes[v]);
        }
    cr_log_info("byte replacements: %d ok, %d rejected", g_ok, g_err);
    free(img.p);
    free(m.p);
}

Test(fuzz_safetensors, random_mutations, .timeout = 120)
{
    bytes h = {0}, img = {0};
    g_rng = 0x5afe7e115eedull;
    for (int iter = 0; iter < 6000; iter++) {
        b_set(&h, k_header, strlen(k_header));
        mutate(&h);
        /* mostly keep the length field truthful so the JSON checks are what gets exercised */
        uint64_t declared = rnd_below(8) ? h.len : strlen(k_header);
        size_t data = rnd_below(4) ? DATA_SIZE : rnd_below(2 * DATA_SIZE);
        build_image(&img, h.p, h.len, declared, data);
        st_try(img.p, img.len);
    }
    cr_log_info("random mutations: %d ok, %d rejected", g_ok, g_err);
    cr_assert_gt(g_err, 0);
    free(h.p);
    free(img.p);
}

Test(fuzz_safetensors, oversized_headers, .timeout = 120)
{
    /* declared over 100 MB, with and without the bytes actually present */
    size_t big = (size_t)SAFETENSORS_MAX_HEADER + 1;
    uint8_t *b = malloc(8 + big);
    cr_assert_not_null(b);
    for (int k = 0; k < 8; k++)
        b[k] = (uint8_t)((uint64_t)big >> (8 * k));
    b[8] = '{';
    b[9] = '}';
    memset(b + 10, ' ', big - 2);
    st_must_fail(b, 16, "declared 100 MB + 1, 16 bytes present");
    safetensors_file f;
    sherl_status st = safetensors_parse(&f, b, 8 + big, "fuzz.safetensors");
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert(strstr(st.msg, "limit"), "%s", st.msg);
    /* exactly at the limit it is a (big, empty) valid header */
    for (int k = 0; k < 8; k++)
        b[k] = (uint8_t)((uint64_t)(big - 1) >> (8 * k));
    st = safetensors_parse(&f, b, 8 + big - 1, "fuzz.safetensors");
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(f.n_tensors, 0);
    safetensors_close(&f);
    free(b);

    /* a 1 MB metadata value is fine */
    size_t vlen = 1u << 20;
    bytes h = {0}, img = {0};
    b_set(&h, "{\"__metadata__\":{\"k\":\"", 22);
    b_reserve(&h, h.len + vlen + 8);
    memset(h.p + h.len, 'v', vlen);
    h.len += vlen;
    b_insert(&h, h.len, "\"}}", 3);
    build_image(&img, h.p, h.len, h.len, 0);
    cr_assert_eq(st_try(img.p, img.len), SHERL_OK);
    free(h.p);
    free(img.p);
}

static void nested(bytes *h, const char *pre, const char *open, const char *mid,
                   const char *close, const char *post, size_t depth)
{
    h->len = 0;
    b_insert(h, h->len, pre, strlen(pre));
    for (size_t i = 0; i < depth; i++)
        b_insert(h, h->len, open, strlen(open));
    b_insert(h, h->len, mid, strlen(mid));
    for (size_t i = 0; i < depth; i++)
        b_insert(h, h->len, close, strlen(close));
    b_insert(h, h->len, post, strlen(post));
}

Test(fuzz_safetensors, deep_nesting, .timeout = 120)
{
    const size_t depths[] = {1, 10, 998, 999, 1000, 1001, 5000, 200000};
    bytes h = {0}, img = {0};
    for (size_t i = 0; i < sizeof depths / sizeof depths[0]; i++) {
        size_t d = depths[i];
        nested(&h, "{\"a\":", "[", "", "]", "}", d);
        build_image(&img, h.p, h.len, h.len, 8);
        st_must_fail(img.p, img.len, "nested arrays");
        nested(&h, "{\"a\":", "{\"a\":", "1", "}", "}", d);
        build_image(&img, h.p, h.len, h.len, 8);
        st_must_fail(img.p, img.len, "nested objects");
        nested(&h, "{\"a\":{\"dtype\":\"F32\",\"shape\":", "[", "1", "]",
               ",\"data_offsets\":[0,4]}}", d);
        build_image(&img, h.p, h.len, h.len, 8);
        if (d > 1)
            st_must_fail(img.p, img.len, "nested shape");
        nested(&h, "{\"__metadata__\":", "{\"k\":", "\"v\"", "}", "}", d);
        build_image(&img, h.p, h.len, h.len, 0);
        if (d > 1)
            st_must_fail(img.p, img.len, "nested metadata");
        nested(&h, "{\"a\":", "[", "", "", "", d); /* unterminated */
        build_image(&img, h.p, h.len, h.len, 0);
        st_must_fail(img.p, img.len, "unterminated nesting");
    }
    free(h.p);
    free(img.p);
}

Test(fuzz_safetensors, duplicated_keys)
{
    const char *hdrs[] = {
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"__metadata__\":{},\"__metadata__\":{}}",
        "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}",
    };
    bytes img = {0};
    for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
        build_image(&img, (const uint8_t *)hdrs[i], strlen(hdrs[i]), strlen(hdrs[i]), 8);
        st_must_fail(img.p, img.len, hdrs[i]);
    }
    /* and every tensor entry of the base header duplicated in turn */
    const char *p = k_header;
    while ((p = strstr(p + 1, "\":{\"dtype\""))) {
        const char *start = p;
        while (*--start != '"')
            ;
        const char *end = strchr(p, '}') + 1;
        bytes h = {0};
        b_set(&h, k_header, strlen(k_header));
        size_t at = 1;
        b_insert(&h, at, ",", 1);
        b_insert(&h, at, start, (size_t)(end - start));
        build_image(&img, h.p, h.len, h.len, DATA_SIZE);
        st_must_fail(img.p, img.len, "duplicated tensor entry");
        free(h.p);
    }
    free(img.p);
}

/* ---------------------------------------------------------------------------------------- */
/* config.json                                                                                 */

static const char *k_config_fallback =
    "{\n  \"architectures\": [\"BertModel\"],\n  \"hidden_act\": \"gelu\",\n"
    "  \"hidden_size\": 384,\n  \"intermediate_size\": 1536,\n  \"layer_norm_eps\": 1e-12,\n"
    "  \"max_position_embeddings\": 512,\n  \"model_type\": \"bert\",\n"
    "  \"num_attention_heads\": 12,\n  \"num_hidden_layers\": 6,\n  \"pad_token_id\": 0,\n"
    "  \"position_embedding_type\": \"absolute\",\n  \"type_vocab_size\": 2,\n"
    "  \"vocab_size\": 30522\n}\n";

static void load_config(bytes *out)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", SHERL_MINILM_DIR);
    FILE *fp = SHERL_MINILM_DIR[0] ? fopen(path, "rb") : NULL;
    if (!fp) {
        cr_log_warn("real config.json not found; using the embedded copy");
        b_set(out, k_config_fallback, strlen(k_config_fallback));
        return;
    }
    out->len = 0;
    uint8_t buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, fp)) > 0)
        b_insert(out, out->len, buf, n);
    fclose(fp);
}

static sherl_code cfg_try(const uint8_t *src, size_t len)
{
    char *b = malloc(len ? len : 1);
    cr_assert_not_null(b);
    if (len)
        memcpy(b, src, len);
    hf_config c;
    sherl_status st = hf_config_parse(&c, b, len, "fuzz/config.json");
    if (st.code == SHERL_OK) {
        cr_assert_str_eq(c.model_type_name, "bert");
        cr_assert(c.vocab_size >= 1 && c.vocab_size <= 10000000);
        cr_assert(c.hidden_size >= 1 && c.hidden_size <= 65536);
        cr_assert(c.num_hidden_layers >= 1 && c.num_hidden_layers <= 1024);
        cr_assert(c.num_attention_heads >= 1 && c.hidden_size % c.num_attention_heads == 0);
        cr_assert(c.intermediate_size >= 1);
        cr_assert(c.max_position_embeddings >= 1 && c.max_position_embeddings <= 1048576);
        cr_assert(c.type_vocab_size >= 1);
        cr_assert(c.pad_token_id >= 0 && c.pad_token_id < c.vocab_size);
        cr_assert(c.layer_norm_eps > 0 && c.layer_norm_eps < 1);
        cr_assert((long long)c.vocab_size * c.hidden_size <= 2147483647LL);
        g_ok++;
    } else {
        cr_assert(st.code == SHERL_EFORMAT || st.code == SHERL_EUNSUPPORTED, "code %s: %s",
                  sherl_code_name(st.code), st.msg);
        cr_assert(strncmp(st.msg, "fuzz/config.json: ", 18) == 0, "%s", st.msg);
        g_err++;
    }
    free(b);
    return st.code;
}

Test(fuzz_hf_config, base_and_truncations)
{
    bytes cfg = {0};
    load_config(&cfg);
    cr_assert_eq(cfg_try(cfg.p, cfg.len), SHERL_OK);
    size_t last = cfg.len;
    while (last > 0 && cfg.p[last - 1] != '}')
        last--;
    cr_assert_gt(last, 0);
    for (size_t l = 0; l < last; l++) {
        sherl_code c = cfg_try(cfg.p, l);
        cr_assert_neq(c, SHERL_OK, "config truncated to %zu bytes parsed", l);
    }
    free(cfg.p);
}

Test(fuzz_hf_config, bit_flips_and_replacements)
{
    bytes cfg = {0}, m = {0};
    load_config(&cfg);
    for (size_t i = 0; i < cfg.len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            b_set(&m, cfg.p, cfg.len);
            m.p[i] ^= (uint8_t)(1u << bit);
            cfg_try(m.p, m.len);
        }
        for (size_t v = 0; v < sizeof k_bytes; v++) {
            b_set(&m, cfg.p, cfg.len);
            m.p[i] = k_bytes[v];
            sherl_code c = cfg_try(m.p, m.len);
            if (k_bytes[v] == 0)
                cr_assert_neq(c, SHERL_OK, "NUL at %zu parsed", i);
        }
    }
    cr_log_info("config flips/replacements: %d ok, %d rejected", g_ok, g_err);
    cr_assert_gt(g_err, 0);
    free(cfg.p);
    free(m.p);
}

Test(fuzz_hf_config, random_mutations, .timeout = 120)
{
    bytes cfg = {0}, m = {0};
    load_config(&cfg);
    g_rng = 0xc0ff1eedull;
    for (int iter = 0; iter < 6000; iter++) {
        b_set(&m, cfg.p, cfg.len);
        mutate(&m);
        cfg_try(m.p, m.len);
    }
    cr_log_info("config random mutations: %d ok, %d rejected", g_ok, g_err);
    cr_assert_gt(g_err, 0);
    free(cfg.p);
    free(m.p);
}

Test(fuzz_hf_config, duplicates_nesting_and_huge_values, .timeout = 120)
{
    bytes cfg = {0}, m = {0};
    load_config(&cfg);
    /* every top-level "key": value line duplicated at the front */
    int dups = 0;
    for (size_t i = 0; i + 1 < cfg.len; i++) {
        if (!(cfg.p[i] == '\n' && cfg.p[i + 1] == ' '))
            continue;
        size_t s = i + 1, e = s;
        while (e < cfg.len && cfg.p[e] != '\n')
            e++;
        b_set(&m, cfg.p, cfg.len);
        b_insert(&m, 1, cfg.p + s, e - s);
        if (m.p[1 + (e - s) - 1] != ',')
            b_insert(&m, 1 + (e - s), ",", 1);
        sherl_code c = cfg_try(m.p, m.len);
        cr_assert_neq(c, SHERL_OK, "duplicated line %.*s parsed", (int)(e - s), cfg.p + s);
        dups++;
    }
    cr_assert_gt(dups, 5);

    /* nesting */
    const size_t depths[] = {10, 999, 1000, 1001, 100000};
    for (size_t i = 0; i < sizeof depths / sizeof depths[0]; i++) {
        nested(&m, "{\"model_type\":", "[", "", "]", "}", depths[i]);
        cr_assert_neq(cfg_try(m.p, m.len), SHERL_OK);
        nested(&m, "", "{\"a\":", "1", "}", "", depths[i]);
        cr_assert_neq(cfg_try(m.p, m.len), SHERL_OK);
        nested(&m, "", "[", "", "", "", depths[i]);
        cr_assert_neq(cfg_try(m.p, m.len), SHERL_OK);
    }

    /* huge, tiny and odd numbers in each integer field */
    const char *fields[] = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                            "intermediate_size", "max_position_embeddings", "type_vocab_size",
                            "pad_token_id", "layer_norm_eps"};
    const char *values[] = {"1e999", "-1e999", "1e308", "2147483648", "4294967296",
                            "9223372036854775808", "-2147483649", "1e-400", "0.999999999",
                            "-0", "NaN", "Infinity", "0x10", "00", "1.", ".5", "1e", "--1"};
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++)
        for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
            /* replace the value in place: after "key": up to the next ',' or newline */
            b_set(&m, cfg.p, cfg.len);
            char key[64];
            snprintf(key, sizeof key, "\"%s\":", fields[f]);
            uint8_t *at = memmem(m.p, m.len, key, strlen(key));
            if (at) {
                size_t s = (size_t)(at - m.p) + strlen(key), e = s;
                while (e < m.len && m.p[e] != ',' && m.p[e] != '\n')
                    e++;
                b_erase(&m, s, e - s);
                b_insert(&m, s, values[v], strlen(values[v]));
            } else {
                char head[128];
                int hn = snprintf(head, sizeof head, "{\"%s\": %s,", fields[f], values[v]);
                b_erase(&m, 0, 1);
                b_insert(&m, 0, head, (size_t)hn);
            }
            cfg_try(m.p, m.len);
        }
    free(cfg.p);
    free(m.p);
}
