/* safetensors reader/writer: round trips, half-precision conversions, the real MiniLM file,
 * and every validation error one at a time from hand-written headers. */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "test_util.h"

/* ---------------------------------------------------------------------------------------- */
/* helpers                                                                                     */

/* 8-byte length + header + data_size bytes of data (filled with a pattern). */
static uint8_t *make_image(const char *header, size_t hlen, size_t data_size, size_t *len)
{
    *len = 8 + hlen + data_size;
    uint8_t *b = malloc(*len ? *len : 1);
    cr_assert_not_null(b);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(b + 8, header, hlen);
    for (size_t i = 0; i < data_size; i++)
        b[8 + hlen + i] = (uint8_t)(0x40 + i % 31);
    return b;
}

static sherl_status parse_header(const char *header, size_t data_size, safetensors_file *f,
                                 uint8_t **keep)
{
    size_t len;
    uint8_t *b = make_image(header, strlen(header), data_size, &len);
    sherl_status st = safetensors_parse(f, b, len, "test.safetensors");
    if (keep)
        *keep = b;
    else {
        if (st.code == SHERL_OK)
            safetensors_close(f);
        free(b);
    }
    return st;
}

/* The header must fail with `code`, and the message must contain each of the strings given. */
static void expect_error_(const char *header, size_t data_size, sherl_code code,
                          const char *const *want)
{
    safetensors_file f;
    sherl_status st = parse_header(header, data_size, &f, NULL);
    cr_assert_eq(st.code, code, "header %s: expected code %s, got %s (%s)", header,
                 sherl_code_name(code), sherl_code_name(st.code), st.msg);
    cr_assert(strstr(st.msg, "test.safetensors") != NULL, "message lacks the label: %s", st.msg);
    for (int i = 0; want[i]; i++)
        cr_assert(strstr(st.msg, want[i]) != NULL, "message '%s' lacks '%s'", st.msg, want[i]);
    cr_assert_eq(f.n_tensors, 0);
    cr_assert_null(f.tensors);
}
#define expect_error(h, ds, code, ...) \
    expect_error_(h, ds, code, (const char *const[]){__VA_ARGS__, NULL})

static int count_temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, "st_rt") && strstr(e->d_name, ".tmp."))
            n++;
    closedir(d);
    return n;
}

static uint8_t *read_whole(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    cr_assert_not_null(fp, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    cr_assert_eq(fread(b, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return b;
}

/* ---------------------------------------------------------------------------------------- */
/* round trip                                                                                  */

Test(safetensors, write_read_round_trip)
{
    const char *path = SHERL_TEST_WORK "/st_rt_round_trip.safetensors";
    float a[6] = {1.5f, -2.25f, 0.0f, 3.0e-39f /* subnormal */, INFINITY, -1e30f};
    float s = 42.0f;
    float v[5] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f};
    st_write_tensor ts[4] = {
        {.name = "layer.weight", .ndim = 2, .shape = {2, 3}, .data = a},
        {.name = "scalar", .ndim = 0, .data = &s},
        {.name = "empty \"quoted\"\\name", .ndim = 2, .shape = {0, 4}, .data = NULL},
        {.name = "a.vector", .ndim = 1, .shape = {5}, .data = v},
    };
    const char *meta[] = {"format", "pt", "note", "line1\nline2 \"q\" \\ \x01", NULL};
    remove(path);
    sherl_status st = safetensors_write_f32(path, ts, 4, meta);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    /* Overwriting an existing file goes through the same atomic path. */
    st = safetensors_write_f32(path, ts, 4, meta);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(count_temp_files(SHERL_TEST_WORK), 0, "temporary file left behind");

    /* Header layout: 8-aligned, padded with spaces, metadata first. */
    size_t len;
    uint8_t *raw = read_whole(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | raw[i];
    cr_assert_eq(hlen % 8, 0);
    cr_assert_eq(len, 8 + hlen + 4 * (6 + 1 + 0 + 5));
    cr_assert_eq(memcmp(raw + 8, "{\"__metadata__\":{", 17), 0);
    size_t last = 8 + hlen - 1;
    while (raw[last] == ' ')
        last--;
    cr_assert_eq(raw[last], '}');
    cr_assert(8 + hlen - 1 - last < 8);
    free(raw);

    safetensors_file f;
    st = safetensors_open(&f, path);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(f.n_tensors, 4);
    for (int i = 1; i < f.n_tensors; i++)
        cr_assert_lt(strcmp(f.tensors[i - 1].name, f.tensors[i].name), 0, "table not sorted");
    cr_assert_str_eq(safetensors_metadata(&f, "format"), "pt");
    cr_assert_str_eq(safetensors_metadata(&f, "note"), "line1\nline2 \"q\" \\ \x01");
    cr_assert_null(safetensors_metadata(&f, "nope"));

    const st_tensor *t = safetensors_find(&f, "layer.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->dtype, ST_F32);
    cr_assert_eq(t->ndim, 2);
    cr_assert_eq(t->shape[0], 2);
    cr_assert_eq(t->shape[1], 3);
    cr_assert_eq(t->numel, 6);
    cr_assert_eq(t->nbytes, 24);
    float got[6];
    st = safetensors_read_f32(&f, "layer.weight", got, 2, (int64_t[]){2, 3});
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(memcmp(got, a, sizeof a), 0);

    t = safetensors_find(&f, "scalar");
    cr_assert_not_null(t);
    cr_assert_eq(t->ndim, 0);
    cr_assert_eq(t->numel, 1);
    float gs = 0;
    st = safetensors_read_f32(&f, "scalar", &gs, 0, NULL);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(gs, 42.0f);

    t = safetensors_find(&f, "empty \"quoted\"\\name");
    cr_assert_not_null(t);
    cr_assert_eq(t->numel, 0);
    cr_assert_eq(t->nbytes, 0);
    st = safetensors_read_f32(&f, "empty \"quoted\"\\name", NULL, 2, (int64_t[]){0, 4});
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);

    float gv[5];
    st = safetensors_read_f32(&f, "a.vector", gv, 1, (int64_t[]){5});
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(memcmp(gv, v, sizeof v), 0);

    /* Wrong expected shape: both shapes in the message. */
    st = safetensors_read_f32(&f, "layer.weight", got, 2, (int64_t[]){3, 2});
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert(strstr(st.msg, "'layer.weight'") && strstr(st.msg, "[2, 3]") &&
                  strstr(st.msg, "[3, 2]"), "%s", st.msg);
    st = safetensors_read_f32(&f, "layer.weight", got, 1, (int64_t[]){6});
    cr_assert_eq(st.code, SHERL_EFORMAT, "%s", st.msg);
    st = safetensors_read_f32(&f, "missing.tensor", got, 1, (int64_t[]){6});
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert(strstr(st.msg, "missing.tensor"), "%s", st.msg);
    cr_assert_null(safetensors_find(&f, "missing.tensor"));
    cr_assert_null(safetensors_find(&f, ""));

    safetensors_close(&f);
    safetensors_close(&f); /* idempotent */
    cr_assert_eq(f.n_tensors, 0);
}

Test(safetensors, write_without_metadata_and_no_tensors)
{
    const char *path = SHERL_TEST_WORK "/st_rt_empty.safetensors";
    sherl_status st = safetensors_write_f32(path, NULL, 0, NULL);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    safetensors_file f;
    st = safetensors_open(&f, path);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(f.n_tensors, 0);
    cr_assert_eq(f.n_metadata, 0);
    cr_assert_null(safetensors_find(&f, "x"));
    safetensors_close(&f);

    float x[3] = {1, 2, 3};
    st_write_tensor t = {.name = "x", .ndim = 1, .shape = {3}, .data = x};
    st = safetensors_write_f32(path, &t, 1, NULL);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    size_t len;
    uint8_t *raw = read_whole(path, &len);
    cr_assert_eq(memcmp(raw + 8, "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
                        53), 0, "%.60s", (const char *)raw + 8);
    free(raw);
}

Test(safetensors, write_errors)
{
    float x[2] = {1, 2};
    st_write_tensor dup[2] = {
        {.name = "a", .ndim = 1, .shape = {2}, .data = x},
        {.name = "a", .ndim = 1, .shape = {2}, .data = x},
    };
    sherl_status st = safetensors_write_f32(SHERL_TEST_WORK "/st_rt_bad.safetensors", dup, 2, NULL);
    cr_assert_eq(st.code, SHERL_EINVAL);
    cr_assert(strstr(st.msg, "'a'"), "%s", st.msg);

    st_write_tensor bad_ndim = {.name = "b", .ndim = 9, .data = x};
    st = safetensors_write_f32(SHERL_TEST_WORK "/st_rt_bad.safetensors", &bad_ndim, 1, NULL);
    cr_assert_eq(st.code, SHERL_EINVAL);

    st_write_tensor neg = {.name = "c", .ndim = 1, .shape = {-1}, .data = x};
    st = safetensors_write_f32(SHERL_TEST_WORK "/st_rt_bad.safetensors", &neg, 1, NULL);
    cr_assert_eq(st.code, SHERL_EINVAL);

    st_write_tensor null_data = {.name = "d", .ndim = 1, .shape = {2}, .data = NULL};
    st = safetensors_write_f32(SHERL_TEST_WORK "/st_rt_bad.safetensors", &null_data, 1, NULL);
    cr_assert_eq(st.code, SHERL_EINVAL);

    st_write_tensor reserved = {.name = "__metadata__", .ndim = 1, .shape = {2}, .data = x};
    st = safetensors_write_f32(SHERL_TEST_WORK "/st_rt_bad.safetensors", &reserved, 1, NULL);
    cr_assert_eq(st.code, SHERL_EINVAL);

    const char *meta_dup[] = {"k", "1", "k", "2", NULL};
    st = safetensors_write_f32(SHERL_TEST_WORK "/st_rt_bad.safetensors", dup, 1, meta_dup);
    cr_assert_eq(st.code, SHERL_EINVAL);

    st_write_tensor bad_utf8 = {.name = "bad\xff", .ndim = 1, .shape = {2}, .data = x};
    st = safetensors_write_f32(SHERL_TEST_WORK "/st_rt_bad.safetensors", &bad_utf8, 1, NULL);
    cr_assert_eq(st.code, SHERL_EINVAL);
    cr_assert(strstr(st.msg, "UTF-8"), "%s", st.msg);

    st = safetensors_write_f32(SHERL_TEST_WORK "/no/such/dir/x.safetensors", dup, 1, NULL);
    cr_assert_eq(st.code, SHERL_EIO);
    cr_assert(strstr(st.msg, "no/such/dir"), "%s", st.msg);
    cr_assert_eq(count_temp_files(SHERL_TEST_WORK), 0);
}

/* ---------------------------------------------------------------------------------------- */
/* half precision                                                                              */

Test(safetensors, f16_to_f32_hand_values)
{
    cr_assert_eq(st_f16_to_f32(0x3C00), 1.0f);
    cr_assert_eq(st_f16_to_f32(0xC000), -2.0f);
    cr_assert_eq(st_f16_to_f32(0x3800), 0.5f);
    cr_assert_eq(st_f16_to_f32(0x3E00), 1.5f);
    cr_assert_eq(st_f16_to_f32(0x7BFF), 65504.0f);
    cr_assert_eq(st_f16_to_f32(0x0400), ldexpf(1.0f, -14));     /* smallest normal */
    cr_assert_eq(st_f16_to_f32(0x0001), ldexpf(1.0f, -24));     /* smallest subnormal */
    cr_assert_eq(st_f16_to_f32(0x03FF), 1023.0f * ldexpf(1.0f, -24)); /* largest subnormal */
    cr_assert_eq(st_f16_to_f32(0x0200), ldexpf(1.0f, -15));
    cr_assert_eq(st_f16_to_f32(0x8001), -ldexpf(1.0f, -24));
    cr_assert_eq(st_f16_to_f32(0x3555), 0.333251953125f);
    float pz = st_f16_to_f32(0x0000), nz = st_f16_to_f32(0x8000);
    cr_assert(pz == 0.0f && !signbit(pz));
    cr_assert(nz == 0.0f && signbit(nz));
    cr_assert(isinf(st_f16_to_f32(0x7C00)) && st_f16_to_f32(0x7C00) > 0);
    cr_assert(isinf(st_f16_to_f32(0xFC00)) && st_f16_to_f32(0xFC00) < 0);
    cr_assert(isnan(st_f16_to_f32(0x7E00)));
    cr_assert(isnan(st_f16_to_f32(0x7C01))); /* signalling NaN stays NaN, not inf */
    cr_assert(isnan(st_f16_to_f32(0xFFFF)));
}

Test(safetensors, bf16_to_f32_hand_values)
{
    cr_assert_eq(st_bf16_to_f32(0x3F80), 1.0f);
    cr_assert_eq(st_bf16_to_f32(0xC000), -2.0f);
    cr_assert_eq(st_bf16_to_f32(0x3FC0), 1.5f);
    cr_assert_eq(st_bf16_to_f32(0x4049), 3.140625f);
    cr_assert_eq(st_bf16_to_f32(0x0001), ldexpf(1.0f, -133)); /* subnormal */
    cr_assert_eq(st_bf16_to_f32(0x0080), ldexpf(1.0f, -126));
    cr_assert(signbit(st_bf16_to_f32(0x8000)));
    cr_assert(isinf(st_bf16_to_f32(0x7F80)) && st_bf16_to_f32(0x7F80) > 0);
    cr_assert(isinf(st_bf16_to_f32(0xFF80)) && st_bf16_to_f32(0xFF80) < 0);
    cr_assert(isnan(st_bf16_to_f32(0x7FC0)));
    cr_assert(isnan(st_bf16_to_f32(0x7F81)));
}

Test(safetensors, f32_to_half_round_to_nearest_even)
{
    /* every f16 value survives a round trip (NaNs stay NaN) */
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        uint16_t back = st_f32_to_f16(f);
        if (isnan(f))
            cr_assert(isnan(st_f16_to_f32(back)), "0x%04x", h);
        else
            cr_assert_eq(back, h, "0x%04x -> %g -> 0x%04x", h, (double)f, back);
    }
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = st_bf16_to_f32((uint16_t)h);
        uint16_t back = st_f32_to_bf16(f);
        if (isnan(f))
            cr_assert(isnan(st_bf16_to_f32(back)));
        else
            cr_assert_eq(back, h, "bf16 0x%04x", h);
    }
    cr_assert_eq(st_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3C00);     /* tie -> even */
    cr_assert_eq(st_f32_to_f16(1.0f + 3 * ldexpf(1, -11)), 0x3C02); /* tie -> even (up) */
    cr_assert_eq(st_f32_to_f16(1.0f + ldexpf(1, -11) + ldexpf(1, -20)), 0x3C01);
    cr_assert_eq(st_f32_to_f16(65519.0f), 0x7BFF);
    cr_assert_eq(st_f32_to_f16(65520.0f), 0x7C00);
    cr_assert_eq(st_f32_to_f16(1e10f), 0x7C00);
    cr_assert_eq(st_f32_to_f16(-INFINITY), 0xFC00);
    cr_assert_eq(st_f32_to_f16(ldexpf(1, -25)), 0x0000);               /* tie -> even 0 */
    cr_assert_eq(st_f32_to_f16(ldexpf(1.5f, -25)), 0x0001);
    cr_assert_eq(st_f32_to_f16(ldexpf(3, -25)), 0x0002);               /* 1.5 ulp: tie -> even 2 */
    cr_assert_eq(st_f32_to_f16(ldexpf(1, -14) - ldexpf(1, -26)), 0x0400); /* rounds up to normal */
    cr_assert_eq(st_f32_to_f16(-0.0f), 0x8000);
    cr_assert_eq(st_f32_to_bf16(1.0f + ldexpf(1, -8)), 0x3F80);
    cr_assert_eq(st_f32_to_bf16(1.0f + 3 * ldexpf(1, -8)), 0x3F82);
    cr_assert_eq(st_f32_to_bf16(3.4028235e38f), 0x7F80);
    cr_assert(isnan(st_f16_to_f32(st_f32_to_f16(NAN))));
    cr_assert(isnan(st_bf16_to_f32(st_f32_to_bf16(NAN))));
}

Test(safetensors, read_f16_bf16_unaligned)
{
    /* A 1-byte U8 tensor first, so the F16 data starts at an odd address. */
    const char *hdr = "{\"u\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                      "\"h\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[1,13]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[13,21]}}";
    size_t len;
    uint8_t *img = make_image(hdr, strlen(hdr), 21, &len);
    uint8_t *d = img + 8 + strlen(hdr);
    const uint16_t h[6] = {0x3C00, 0xC000, 0x7C00, 0x0001, 0x8000, 0x7E00};
    const uint16_t b[4] = {0x3F80, 0xC000, 0xFF80, 0x0001};
    for (int i = 0; i < 6; i++) {
        d[1 + 2 * i] = (uint8_t)(h[i] & 0xff);
        d[2 + 2 * i] = (uint8_t)(h[i] >> 8);
    }
    for (int i = 0; i < 4; i++) {
        d[13 + 2 * i] = (uint8_t)(b[i] & 0xff);
        d[14 + 2 * i] = (uint8_t)(b[i] >> 8);
    }
    safetensors_file f;
    sherl_status st = safetensors_parse(&f, img, len, "test.safetensors");
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    float out[6];
    st = safetensors_read_f32(&f, "h", out, 2, (int64_t[]){2, 3});
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(out[0], 1.0f);
    cr_assert_eq(out[1], -2.0f);
    cr_assert(isinf(out[2]) && out[2] > 0);
    cr_assert_eq(out[3], ldexpf(1, -24));
    cr_assert(out[4] == 0 && signbit(out[4]));
    cr_assert(isnan(out[5]));
    st = safetensors_read_f32(&f, "b", out, 1, (int64_t[]){4});
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(out[0], 1.0f);
    cr_assert_eq(out[1], -2.0f);
    cr_assert(isinf(out[2]) && out[2] < 0);
    cr_assert_eq(out[3], ldexpf(1, -133));
    st = safetensors_read_f32(&f, "u", out, 1, (int64_t[]){1});
    cr_assert_eq(st.code, SHERL_EUNSUPPORTED);
    cr_assert(strstr(st.msg, "'u'") && strstr(st.msg, "U8"), "%s", st.msg);
    safetensors_close(&f);
    free(img);
}

/* ---------------------------------------------------------------------------------------- */
/* the real model                                                                              */

Test(safetensors, real_minilm)
{
    char path[1024];
    minilm_file(path, sizeof path, "model.safetensors");
    safetensors_file f;
    sherl_status st = safetensors_open(&f, path);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(f.n_tensors, 104); /* 6 layers x 16 + 6 embeddings + 2 pooler */
    cr_assert_str_eq(safetensors_metadata(&f, "format"), "pt");

    const st_tensor *t = safetensors_find(&f, "embeddings.word_embeddings.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->dtype, ST_F32);
    cr_assert_eq(t->ndim, 2);
    cr_assert_eq(t->shape[0], 30522);
    cr_assert_eq(t->shape[1], 384);
    t = safetensors_find(&f, "encoder.layer.5.intermediate.dense.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->shape[0], 1536);
    cr_assert_eq(t->shape[1], 384);
    t = safetensors_find(&f, "encoder.layer.0.attention.self.query.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->shape[0], 384);
    cr_assert_eq(t->shape[1], 384);
    cr_assert_null(safetensors_find(&f, "encoder.layer.6.attention.self.query.weight"));

    /* Values checked against numpy's reading of the same file. */
    float ln[384];
    st = safetensors_read_f32(&f, "embeddings.LayerNorm.weight", ln, 1, (int64_t[]){384});
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(ln[0], 0.5989283323287964f);
    cr_assert_eq(ln[1], 0.583594799041748f);
    cr_assert_eq(ln[2], 0.6335410475730896f);
    double sum = 0;
    for (int i = 0; i < 384; i++)
        sum += ln[i];
    cr_assert(fabs(sum - 236.85435231029987) < 1e-9, "sum %.17g", sum);

    float *pw = malloc(384 * 384 * sizeof *pw);
    st = safetensors_read_f32(&f, "pooler.dense.weight", pw, 2, (int64_t[]){384, 384});
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(pw[383 * 384 + 380], -0.0191802978515625f);
    cr_assert_eq(pw[383 * 384 + 383], -0.01418304443359375f);
    free(pw);

    /* position_ids: I64, present and readable as raw data, refused as fp32. */
    t = safetensors_find(&f, "embeddings.position_ids");
    cr_assert_not_null(t);
    cr_assert_eq(t->dtype, ST_I64);
    cr_assert_eq(t->nbytes, 512 * 8);
    int64_t id4;
    memcpy(&id4, t->data + 4 * 8, 8);
    cr_assert_eq(id4, 4);
    float tmp[512];
    st = safetensors_read_f32(&f, "embeddings.position_ids", tmp, 2, (int64_t[]){1, 512});
    cr_assert_eq(st.code, SHERL_EUNSUPPORTED);
    cr_assert(strstr(st.msg, "embeddings.position_ids") && strstr(st.msg, "I64") &&
                  strstr(st.msg, "model.safetensors"), "%s", st.msg);

    /* Wrong expected shape names both shapes. */
    st = safetensors_read_f32(&f, "encoder.layer.5.output.dense.weight", tmp, 2,
                              (int64_t[]){1536, 384});
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert(strstr(st.msg, "[384, 1536]") && strstr(st.msg, "[1536, 384]"), "%s", st.msg);
    safetensors_close(&f);
}

/* Every F32 tensor of the real model, written back out and read again, bit for bit. */
Test(safetensors, real_minilm_rewrite, .timeout = 120)
{
    char path[1024];
    minilm_file(path, sizeof path, "model.safetensors");
    safetensors_file f;
    sherl_status st = safetensors_open(&f, path);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    st_write_tensor *w = calloc((size_t)f.n_tensors, sizeof *w);
    float **bufs = calloc((size_t)f.n_tensors, sizeof *bufs);
    int n = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        if (t->dtype != ST_F32)
            continue;
        bufs[n] = malloc((size_t)t->numel * sizeof(float));
        st = safetensors_read_f32(&f, t->name, bufs[n], t->ndim, t->shape);
        cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
        w[n].name = t->name;
        w[n].ndim = t->ndim;
        memcpy(w[n].shape, t->shape, sizeof t->shape);
        w[n].data = bufs[n];
        n++;
    }
    cr_assert_eq(n, 103);
    const char *out = SHERL_TEST_WORK "/st_rt_minilm.safetensors";
    const char *meta[] = {"format", "pt", NULL};
    st = safetensors_write_f32(out, w, n, meta);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);

    safetensors_file g;
    st = safetensors_open(&g, out);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(g.n_tensors, n);
    for (int i = 0; i < n; i++) {
        const st_tensor *a = safetensors_find(&f, w[i].name), *b = safetensors_find(&g, w[i].name);
        cr_assert_not_null(b);
        cr_assert_eq(b->ndim, a->ndim);
        cr_assert_eq(memcmp(b->shape, a->shape, sizeof a->shape), 0);
        cr_assert_eq(b->nbytes, a->nbytes);
        cr_assert_eq(memcmp(b->data, a->data, a->nbytes), 0, "%s differs", a->name);
        free(bufs[i]);
    }
    safetensors_close(&g);
    safetensors_close(&f);
    free(bufs);
    free(w);
    remove(out);
}

/* ---------------------------------------------------------------------------------------- */
/* file-level errors                                                                           */

Test(safetensors, open_errors, .timeout = 30)
{
    safetensors_file f;
    sherl_status st = safetensors_open(&f, SHERL_TEST_WORK "/does-not-exist.safetensors");
    cr_assert_eq(st.code, SHERL_EIO);
    cr_assert(strstr(st.msg, "does-not-exist.safetensors"), "%s", st.msg);
    st = safetensors_open(&f, SHERL_TEST_WORK);
    cr_assert_eq(st.code, SHERL_EIO, "%s", st.msg);

    const char *tiny = SHERL_TEST_WORK "/st_tiny.safetensors";
    write_file(tiny, "\x02\0\0", 3);
    st = safetensors_open(&f, tiny);
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert(strstr(st.msg, "too short"), "%s", st.msg);

    write_file(tiny, "", 0); /* empty file */
    st = safetensors_open(&f, tiny);
    cr_assert_eq(st.code, SHERL_EFORMAT, "%s", st.msg);

    /* a FIFO nobody writes: refused at once (a plain open() would wait for a writer forever) */
    const char *fifo = SHERL_TEST_WORK "/st_fifo.safetensors";
    unlink(fifo);
    cr_assert_eq(mkfifo(fifo, 0600), 0, "mkfifo: %s", strerror(errno));
    st = safetensors_open(&f, fifo);
    cr_assert_eq(st.code, SHERL_EIO, "%s", st.msg);
    cr_assert(strstr(st.msg, "st_fifo.safetensors") && strstr(st.msg, "not a regular file"),
              "%s", st.msg);
    unlink(fifo);
}

Test(safetensors, header_length_errors)
{
    safetensors_file f;
    uint8_t small[16] = {0};
    sherl_status st = safetensors_parse(&f, small, 7, "test.safetensors");
    cr_assert_eq(st.code, SHERL_EFORMAT);

    /* declared 100 MB + 1: over the bound, before any allocation */
    uint64_t n = (uint64_t)SAFETENSORS_MAX_HEADER + 1;
    for (int i = 0; i < 8; i++)
        small[i] = (uint8_t)(n >> (8 * i));
    st = safetensors_parse(&f, small, sizeof small, "test.safetensors");
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert(strstr(st.msg, "limit"), "%s", st.msg);

    memset(small, 0xff, 8);
    st = safetensors_parse(&f, small, sizeof small, "test.safetensors");
    cr_assert_eq(st.code, SHERL_EFORMAT);

    /* past the end of the file */
    size_t len;
    uint8_t *img = make_image("{}", 2, 0, &len);
    img[0] = 3;
    st = safetensors_parse(&f, img, len, "test.safetensors");
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert(strstr(st.msg, "runs past the end"), "%s", st.msg);
    img[0] = 0;
    st = safetensors_parse(&f, img, len, "test.safetensors");
    cr_assert_eq(st.code, SHERL_EFORMAT, "zero-length header must fail");
    free(img);
}

Test(safetensors, header_text_errors)
{
    expect_error("[]", 0, SHERL_EFORMAT, "'{'");
    expect_error("   {}", 0, SHERL_EFORMAT, "'{'");
    expect_error("{\"a\":", 0, SHERL_EFORMAT, "not valid JSON");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, SHERL_EFORMAT,
                 "not valid JSON");
    expect_error("{}x", 0, SHERL_EFORMAT, "after the JSON");
    expect_error("{}{}", 0, SHERL_EFORMAT, "after the JSON");
    expect_error("{\"a\x01\":1}", 0, SHERL_EFORMAT, "control character");
    expect_error("{\"\xff\":1}", 0, SHERL_EFORMAT, "UTF-8");
    expect_error("{\"\xc3\":1}", 0, SHERL_EFORMAT, "UTF-8");
    expect_error("{\"\xed\xa0\x80\":1}", 0, SHERL_EFORMAT, "UTF-8"); /* surrogate */

    /* Valid edge cases */
    safetensors_file f;
    cr_assert_eq(parse_header("{}", 0, &f, NULL).code, SHERL_OK);
    cr_assert_eq(parse_header("{}        ", 0, &f, NULL).code, SHERL_OK);
    cr_assert_eq(parse_header("{\"__metadata__\":{}}", 0, &f, NULL).code, SHERL_OK);
    cr_assert_eq(parse_header("{\"\xc3\xa9t\xc3\xa9\":{\"dtype\":\"F32\",\"shape\":[],"
                              "\"data_offsets\":[0,4]}}", 4, &f, NULL).code, SHERL_OK);
}

Test(safetensors, metadata_errors)
{
    expect_error("{\"__metadata__\":[]}", 0, SHERL_EFORMAT, "__metadata__");
    expect_error("{\"__metadata__\":{\"format\":1}}", 0, SHERL_EFORMAT, "'format'", "string");
    expect_error("{\"__metadata__\":{\"a\":\"b\"},\"__metadata__\":{}}", 0, SHERL_EFORMAT,
                 "more than once");
    expect_error("{\"__metadata__\":{\"a\":\"b\",\"a\":\"c\"}}", 0, SHERL_EFORMAT, "'a'",
                 "more than once");
}

#define T(dt, shape, offs) "{\"w.x\":{\"dtype\":" dt ",\"shape\":" shape ",\"data_offsets\":" offs "}}"

Test(safetensors, entry_errors)
{
    expect_error("{\"w.x\":5}", 0, SHERL_EFORMAT, "'w.x'", "object");
    expect_error("{\"w.x\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, SHERL_EFORMAT, "'w.x'",
                 "dtype");
    expect_error("{\"w.x\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, SHERL_EFORMAT, "'w.x'",
                 "shape");
    expect_error("{\"w.x\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, SHERL_EFORMAT, "'w.x'",
                 "data_offsets");
    expect_error("{\"w.x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}", 4,
                 SHERL_EFORMAT, "'w.x'", "\"extra\"");
    expect_error("{\"w.x\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                 4, SHERL_EFORMAT, "'w.x'", "more than once");
    expect_error("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, SHERL_EFORMAT,
                 "empty name");
}

Test(safetensors, dtype_errors)
{
    expect_error(T("\"F33\"", "[1]", "[0,4]"), 4, SHERL_EFORMAT, "'w.x'", "F33");
    expect_error(T("\"f32\"", "[1]", "[0,4]"), 4, SHERL_EFORMAT, "'w.x'", "f32");
    expect_error(T("\"I8\"", "[1]", "[0,1]"), 4, SHERL_EUNSUPPORTED, "'w.x'", "I8");
    expect_error(T("\"F8_E4M3\"", "[1]", "[0,1]"), 4, SHERL_EUNSUPPORTED, "'w.x'", "F8_E4M3");
    expect_error(T("4", "[1]", "[0,4]"), 4, SHERL_EFORMAT, "'w.x'", "dtype");
    expect_error(T("null", "[1]", "[0,4]"), 4, SHERL_EFORMAT, "'w.x'", "dtype");

    /* the readable dtypes and their sizes */
    const struct {
        const char *dt;
        st_dtype e;
        size_t size;
    } ok[] = {{"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2}, {"I64", ST_I64, 8},
              {"I32", ST_I32, 4}, {"U8", ST_U8, 1},   {"BOOL", ST_BOOL, 1}, {"F64", ST_F64, 8}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char hdr[200];
        snprintf(hdr, sizeof hdr, "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}",
                 ok[i].dt, 3 * ok[i].size);
        safetensors_file f;
        uint8_t *img;
        sherl_status st = parse_header(hdr, 24, &f, &img);
        cr_assert_eq(st.code, SHERL_OK, "%s: %s", ok[i].dt, st.msg);
        cr_assert_eq(f.tensors[0].dtype, ok[i].e);
        cr_assert_eq(f.tensors[0].nbytes, 3 * ok[i].size);
        cr_assert_eq(st_dtype_size(ok[i].e), ok[i].size);
        cr_assert_str_eq(st_dtype_name(ok[i].e), ok[i].dt);
        safetensors_close(&f);
        free(img);
    }
}

Test(safetensors, shape_errors)
{
    expect_error(T("\"F32\"", "3", "[0,12]"), 12, SHERL_EFORMAT, "'w.x'", "shape is 3");
    expect_error(T("\"F32\"", "[3.5]", "[0,14]"), 14, SHERL_EFORMAT, "'w.x'", "3.5");
    expect_error(T("\"F32\"", "[-1]", "[0,4]"), 4, SHERL_EFORMAT, "'w.x'", "-1");
    expect_error(T("\"F32\"", "[\"3\"]", "[0,12]"), 12, SHERL_EFORMAT, "'w.x'", "string");
    expect_error(T("\"F32\"", "[true]", "[0,4]"), 4, SHERL_EFORMAT, "'w.x'", "true");
    expect_error(T("\"F32\"", "[[3]]", "[0,12]"), 12, SHERL_EFORMAT, "'w.x'", "array");
    expect_error(T("\"F32\"", "[9007199254740994]", "[0,4]"), 4, SHERL_EFORMAT, "'w.x'",
                 "9007199254740994");
    expect_error(T("\"F32\"", "[1e400]", "[0,4]"), 4, SHERL_EFORMAT, "'w.x'");
    expect_error(T("\"F32\"", "[1,1,1,1,1,1,1,1,1]", "[0,4]"), 4, SHERL_EFORMAT, "'w.x'",
                 "more than 8");
    expect_error(T("\"F32\"", "[67108864,67108864,67108864]", "[0,4]"), 4, SHERL_EFORMAT, "'w.x'",
                 "too many elements");
    expect_error(T("\"F32\"", "[9007199254740992,2]", "[0,4]"), 4, SHERL_EFORMAT, "'w.x'",
                 "too many elements");
    /* numel fits 2^53 but bytes overflow int64? numel * 8 <= 2^56: fine, so it must be a size
     * mismatch, not an overflow */
    expect_error(T("\"F64\"", "[9007199254740992]", "[0,8]"), 8, SHERL_EFORMAT, "'w.x'",
                 "needs 72057594037927936");

    /* valid: 8 dims, zero-size dims, scalars */
    safetensors_file f;
    cr_assert_eq(parse_header(T("\"F32\"", "[1,1,1,1,1,1,1,2]", "[0,8]"), 8, &f, NULL).code,
                 SHERL_OK);
    cr_assert_eq(parse_header(T("\"F32\"", "[0,1000000]", "[0,0]"), 0, &f, NULL).code, SHERL_OK);
    cr_assert_eq(parse_header(T("\"F32\"", "[]", "[0,4]"), 4, &f, NULL).code, SHERL_OK);
}

Test(safetensors, data_offsets_errors)
{
    /* The message format from the design brief, exactly. */
    safetensors_file f;
    const char *q = "{\"encoder.layer.0.attention.self.query.weight\":{\"dtype\":\"F32\","
                    "\"shape\":[384,384],\"data_offsets\":[0,100]}}";
    size_t len;
    uint8_t *img = make_image(q, strlen(q), 100, &len);
    sherl_status st = safetensors_parse(&f, img, len, "model.safetensors");
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert_str_eq(st.msg, "model.safetensors: tensor 'encoder.layer.0.attention.self.query.weight': "
                             "data_offsets [0, 100] hold 100 bytes but shape [384, 384] of F32 "
                             "needs 589824");
    free(img);

    expect_error(T("\"F32\"", "[1]", "4"), 4, SHERL_EFORMAT, "'w.x'", "data_offsets");
    expect_error(T("\"F32\"", "[1]", "[0]"), 4, SHERL_EFORMAT, "'w.x'", "data_offsets");
    expect_error(T("\"F32\"", "[1]", "[0,4,8]"), 8, SHERL_EFORMAT, "'w.x'", "data_offsets");
    expect_error(T("\"F32\"", "[1]", "[-4,0]"), 4, SHERL_EFORMAT, "'w.x'", "-4");
    expect_error(T("\"F32\"", "[1]", "[0,4.5]"), 8, SHERL_EFORMAT, "'w.x'", "4.5");
    expect_error(T("\"F32\"", "[1]", "[\"0\",4]"), 4, SHERL_EFORMAT, "'w.x'", "string");
    expect_error(T("\"F32\"", "[1]", "[8,4]"), 8, SHERL_EFORMAT, "'w.x'", "[8, 4]");
    expect_error(T("\"F32\"", "[1]", "[4,8]"), 6, SHERL_EFORMAT, "'w.x'", "past the end",
                 "(6 bytes)");
    expect_error(T("\"F32\"", "[2]", "[0,4]"), 8, SHERL_EFORMAT, "'w.x'", "hold 4 bytes",
                 "needs 8");
    expect_error(T("\"F32\"", "[1]", "[0,9007199254740994]"), 8, SHERL_EFORMAT, "'w.x'");

    /* valid: gaps and trailing bytes are allowed */
    cr_assert_eq(parse_header(T("\"F32\"", "[1]", "[4,8]"), 16, &f, NULL).code, SHERL_OK);
}

Test(safetensors, overlap_and_duplicates)
{
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                 12, SHERL_EFORMAT, "'a'", "'b'", "overlap");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 16, SHERL_EFORMAT, "'a'", "'b'", "overlap");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                 4, SHERL_EFORMAT, "overlap");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 8, SHERL_EFORMAT, "'a'", "more than once");
    /* adjacent and empty tensors do not overlap */
    safetensors_file f;
    sherl_status st = parse_header(
        "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[2,2]},"
        "\"__metadata__\":{\"k\":\"v\"}}", 8, &f, NULL);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
}

/* Many tensors: the header checks stay fast (no quadratic pass). */
Test(safetensors, many_tensors, .timeout = 60)
{
    enum { N = 20000 };
    size_t cap = (size_t)N * 96 + 16, n = 0;
    char *hdr = malloc(cap);
    n += (size_t)snprintf(hdr + n, cap - n, "{");
    for (int i = 0; i < N; i++)
        n += (size_t)snprintf(hdr + n, cap - n,
                              "%s\"t%05d\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[%d,%d]}",
                              i ? "," : "", (i * 7919) % N, 4 * i, 4 * i + 4);
    snprintf(hdr + n, cap - n, "}");
    safetensors_file f;
    uint8_t *img;
    sherl_status st = parse_header(hdr, 4 * N, &f, &img);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(f.n_tensors, N);
    for (int i = 0; i < N; i += 997) {
        char name[16];
        snprintf(name, sizeof name, "t%05d", i);
        cr_assert_not_null(safetensors_find(&f, name));
    }
    safetensors_close(&f);
    free(img);
    free(hdr);
}
