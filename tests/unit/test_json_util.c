/* Shared JSON helpers (engine/json_util.c): bounded file reading, parse errors with their
 * offsets, and the typed field getters with their messages. */
#include <criterion/criterion.h>

#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json_util.h"
#include "test_util.h"

/* `code`, and a message holding each given string. */
static void expect_(sherl_status st, sherl_code code, const char *const *want)
{
    cr_assert_eq(st.code, code, "expected %s, got %s: %s", sherl_code_name(code),
                 sherl_code_name(st.code), st.msg);
    for (int i = 0; want[i]; i++)
        cr_assert(strstr(st.msg, want[i]), "message '%s' lacks '%s'", st.msg, want[i]);
}
#define expect(st, code, ...) expect_(st, code, (const char *const[]){__VA_ARGS__, NULL})

/* json_parse on an exact-size heap copy of s (so ASan sees any read past the end). */
static sherl_status parse(const char *s, const char *what, cJSON **root)
{
    size_t n = strlen(s);
    char *copy = malloc(n ? n : 1);
    cr_assert_not_null(copy);
    memcpy(copy, s, n);
    sherl_status st = json_parse(copy, n, "t.json", what, root);
    free(copy);
    return st;
}

static cJSON *parse_ok(const char *s)
{
    cJSON *root = NULL;
    sherl_status st = parse(s, NULL, &root);
    cr_assert_eq(st.code, SHERL_OK, "%s: %s", s, st.msg);
    cr_assert_not_null(root);
    return root;
}

static sherl_status parse_fails(const char *s, const char *what)
{
    cJSON *root = (cJSON *)1;
    sherl_status st = parse(s, what, &root);
    cr_assert_neq(st.code, SHERL_OK, "%s parsed", s);
    cr_assert_null(root, "no value is handed out on error");
    cr_assert(strncmp(st.msg, "t.json: ", 8) == 0, "message lacks the label: %s", st.msg);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* sherl_read_file                                                                             */

Test(json_util, read_file)
{
    const char *path = SHERL_TEST_WORK "/json_util_read.json";
    write_file(path, "{\"a\": 1}\n", 9);
    char *data = NULL;
    size_t len = 0;
    sherl_status st = sherl_read_file(path, 1024, &data, &len);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(len, 9);
    cr_assert_str_eq(data, "{\"a\": 1}\n"); /* NUL-terminated */
    free(data);

    /* exactly at the limit is fine, one byte over is not */
    st = sherl_read_file(path, 9, &data, &len);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    free(data);
    st = sherl_read_file(path, 8, &data, &len);
    expect(st, SHERL_EFORMAT, "json_util_read.json", "too large", "9 bytes", "limit 8");
    cr_assert_null(data);
    cr_assert_eq(len, 0);

    /* empty file: an empty, terminated buffer */
    write_file(path, "", 0);
    st = sherl_read_file(path, 8, &data, &len);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(len, 0);
    cr_assert_eq(data[0], '\0');
    free(data);
}

Test(json_util, read_file_errors, .timeout = 30)
{
    char *data = (char *)1;
    size_t len = 7;
    sherl_status st = sherl_read_file(SHERL_TEST_WORK "/json_util_missing.json", 1024, &data, &len);
    expect(st, SHERL_EIO, SHERL_TEST_WORK "/json_util_missing.json", "cannot open");
    cr_assert_null(data);
    cr_assert_eq(len, 0);

    st = sherl_read_file(SHERL_TEST_WORK, 1024, &data, &len);
    expect(st, SHERL_EIO, SHERL_TEST_WORK, "directory");
    cr_assert_null(data);

    /* a stream (no size known up front) is bounded too */
    st = sherl_read_file("/dev/zero", 100000, &data, &len);
    expect(st, SHERL_EFORMAT, "/dev/zero", "too large", "limit 100000");
    cr_assert_null(data);

    /* a FIFO nobody writes reads as empty instead of waiting in open() for a writer */
    const char *fifo = SHERL_TEST_WORK "/json_util_fifo.json";
    unlink(fifo);
    cr_assert_eq(mkfifo(fifo, 0600), 0, "mkfifo: %s", strerror(errno));
    st = sherl_read_file(fifo, 1024, &data, &len);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert_eq(len, 0);
    free(data);
    cJSON *root = NULL;
    st = json_load_object(fifo, 1024, &root);
    cr_assert_neq(st.code, SHERL_OK, "an empty FIFO is not a JSON object");
    cr_assert(strstr(st.msg, "json_util_fifo.json"), "%s", st.msg);
    cr_assert_null(root);
    unlink(fifo);
}

/* ---------------------------------------------------------------------------------------- */
/* json_parse                                                                                  */

Test(json_util, parse_ok)
{
    cJSON *root = parse_ok("  {\"a\": [1, 2, {\"b\": null}], \"c\": \"x\"} \n\t\r ");
    cr_assert(cJSON_IsObject(root));
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(root, "a")), 3);
    cr_assert_eq(json_expect_object(root, "t.json", NULL).code, SHERL_OK);
    cJSON_Delete(root);

    root = parse_ok("[1]"); /* any value parses; objects are asked for separately */
    expect(json_expect_object(root, "t.json", NULL), SHERL_EFORMAT, "t.json: not a JSON object");
    expect(json_expect_object(root, "t.json", "config"), SHERL_EFORMAT,
           "t.json: config is not a JSON object");
    cJSON_Delete(root);
}

Test(json_util, truncated_and_invalid)
{
    /* cJSON stops at the last byte of a truncated text */
    sherl_status st = parse_fails("{\"a\": [1, 2", NULL);
    expect(st, SHERL_EFORMAT, "t.json: not valid JSON", "byte 10 of 11", "line 1, column 11");
    st = parse_fails("{\"a\":\n  tru}", "header");
    expect(st, SHERL_EFORMAT, "t.json: header is not valid JSON", "line 2", "of 12");
    expect(parse_fails("", NULL), SHERL_EFORMAT, "not valid JSON", "byte 0 of 0");
    expect(parse_fails("   ", NULL), SHERL_EFORMAT, "not valid JSON");

    /* trailing data: the offset where it begins */
    st = parse_fails("{}  x", NULL);
    expect(st, SHERL_EFORMAT, "unexpected data after the JSON", "byte 4 of 5");
    st = parse_fails("{}{}", "header");
    expect(st, SHERL_EFORMAT, "t.json: header has unexpected data after the JSON", "byte 2 of 4");

    /* NUL bytes are never JSON (cJSON would stop at them) */
    char nul[] = "{\"a\": \"b\0\"}";
    cJSON *root = (cJSON *)1;
    st = json_parse(nul, sizeof nul - 1, "t.json", NULL, &root);
    expect(st, SHERL_EFORMAT, "NUL", "offset 8");
    cr_assert_null(root);
}

Test(json_util, too_deep)
{
    size_t depth = 100000;
    char *deep = nested_json(depth);
    expect(parse_fails(deep, NULL), SHERL_EFORMAT, "t.json: JSON nests deeper than");
    expect(parse_fails(deep, "header"), SHERL_EFORMAT, "t.json: header JSON nests deeper than");
    free(deep);

    /* the limit itself: CJSON_NESTING_LIMIT levels parse, one more does not */
    deep = nested_json(CJSON_NESTING_LIMIT - 1); /* + the outer object */
    cJSON_Delete(parse_ok(deep));
    free(deep);
    deep = nested_json(CJSON_NESTING_LIMIT);
    char want[64];
    snprintf(want, sizeof want, "nests deeper than %d levels", CJSON_NESTING_LIMIT);
    expect(parse_fails(deep, NULL), SHERL_EFORMAT, want);
    free(deep);

    /* brackets inside strings do not count */
    char *strs = malloc(depth + 16);
    cr_assert_not_null(strs);
    size_t k = (size_t)sprintf(strs, "{\"a\":\"");
    for (size_t i = 0; i < depth / 2; i++)
        strs[k++] = '[';
    strcpy(strs + k, "\"}");
    cJSON *root = parse_ok(strs);
    cJSON_Delete(root);
    free(strs);
}

Test(json_util, load_object)
{
    const char *path = SHERL_TEST_WORK "/json_util_load.json";
    write_file(path, "{\"k\": true}", 11);
    cJSON *root = NULL;
    sherl_status st = json_load_object(path, 1024, &root);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "k")));
    cJSON_Delete(root);

    st = json_load_object(path, 10, &root);
    expect(st, SHERL_EFORMAT, path, "too large");
    cr_assert_null(root);

    write_file(path, "[true]", 6);
    expect(json_load_object(path, 1024, &root), SHERL_EFORMAT, path, "not a JSON object");
    cr_assert_null(root);
    write_file(path, "{\"k\": ", 6);
    expect(json_load_object(path, 1024, &root), SHERL_EFORMAT, path, "not valid JSON", "of 6");
    cr_assert_null(root);
    expect(json_load_object(SHERL_TEST_WORK "/json_util_nope.json", 1024, &root), SHERL_EIO,
           "json_util_nope.json");
    cr_assert_null(root);
}

/* ---------------------------------------------------------------------------------------- */
/* fields                                                                                      */

static const char *k_fields = "{\"yes\": true, \"no\": false, \"nil\": null, \"n\": 42, "
                              "\"half\": 2.5, \"neg\": -3, \"big\": 1e400, \"s\": \"text\", "
                              "\"arr\": [1], \"obj\": {}}";

Test(json_util, get_bool)
{
    cJSON *root = parse_ok(k_fields);
    int b = 7;
    cr_assert_eq(json_get_bool(root, "t.json", "yes", &b).code, SHERL_OK);
    cr_assert_eq(b, 1);
    cr_assert_eq(json_get_bool(root, "t.json", "no", &b).code, SHERL_OK);
    cr_assert_eq(b, 0);
    b = 7; /* absent and null leave the default */
    cr_assert_eq(json_get_bool(root, "t.json", "absent", &b).code, SHERL_OK);
    cr_assert_eq(json_get_bool(root, "t.json", "nil", &b).code, SHERL_OK);
    cr_assert_eq(b, 7);

    expect(json_get_bool(root, "t.json", "n", &b), SHERL_EFORMAT,
           "t.json: field 'n' is 42, expected true or false");
    expect(json_get_bool(root, "t.json", "s", &b), SHERL_EFORMAT, "'s'", "the string \"text\"",
           "true or false");
    expect(json_get_bool(root, "t.json", "arr", &b), SHERL_EFORMAT, "'arr'", "an array");
    cr_assert_eq(b, 7, "a refused value is not stored");
    cJSON_Delete(root);
}

Test(json_util, get_int)
{
    cJSON *root = parse_ok(k_fields);
    int v = -1;
    cr_assert_eq(json_get_int(root, "t.json", "n", 0, 100, &v).code, SHERL_OK);
    cr_assert_eq(v, 42);
    cr_assert_eq(json_get_int(root, "t.json", "neg", -3, 0, &v).code, SHERL_OK);
    cr_assert_eq(v, -3);
    v = 5;
    cr_assert_eq(json_get_int(root, "t.json", "absent", 0, 1, &v).code, SHERL_OK);
    cr_assert_eq(json_get_int(root, "t.json", "nil", 0, 1, &v).code, SHERL_OK);
    cr_assert_eq(v, 5);

    expect(json_get_int(root, "t.json", "n", 0, 41, &v), SHERL_EFORMAT,
           "t.json: field 'n' is 42, expected an integer in [0, 41]");
    expect(json_get_int(root, "t.json", "neg", 0, 10, &v), SHERL_EFORMAT, "'neg'", "-3");
    expect(json_get_int(root, "t.json", "half", 0, 10, &v), SHERL_EFORMAT, "'half'", "2.5",
           "an integer");
    expect(json_get_int(root, "t.json", "big", 0, 10, &v), SHERL_EFORMAT, "'big'", "inf");
    expect(json_get_int(root, "t.json", "s", 0, 10, &v), SHERL_EFORMAT, "'s'", "string");
    expect(json_get_int(root, "t.json", "yes", 0, 10, &v), SHERL_EFORMAT, "'yes'", "true");
    cr_assert_eq(v, 5);

    /* required */
    cr_assert_eq(json_require_int(root, "t.json", "n", 1, 100, &v).code, SHERL_OK);
    cr_assert_eq(v, 42);
    expect(json_require_int(root, "t.json", "absent", 1, 100, &v), SHERL_EFORMAT,
           "t.json: field 'absent' is missing (expected an integer in [1, 100])");
    expect(json_require_int(root, "t.json", "nil", 1, 100, &v), SHERL_EFORMAT,
           "field 'nil' is null, expected an integer in [1, 100]");
    cJSON_Delete(root);
}

Test(json_util, get_number_and_string)
{
    cJSON *root = parse_ok(k_fields);
    double d = -1;
    cr_assert_eq(json_get_number(root, "t.json", "half", &d).code, SHERL_OK);
    cr_assert_eq(d, 2.5);
    cr_assert_eq(json_get_number(root, "t.json", "big", &d).code, SHERL_OK);
    cr_assert(d > 1e308);
    d = -1;
    cr_assert_eq(json_get_number(root, "t.json", "nil", &d).code, SHERL_OK);
    cr_assert_eq(d, -1);
    expect(json_get_number(root, "t.json", "s", &d), SHERL_EFORMAT,
           "t.json: field 's' is the string \"text\", expected a number");
    expect(json_get_number(root, "t.json", "obj", &d), SHERL_EFORMAT, "'obj'", "an object");

    const char *s = NULL;
    cr_assert_eq(json_get_string(root, "t.json", "s", &s).code, SHERL_OK);
    cr_assert_str_eq(s, "text");
    s = "default";
    cr_assert_eq(json_get_string(root, "t.json", "absent", &s).code, SHERL_OK);
    cr_assert_eq(json_get_string(root, "t.json", "nil", &s).code, SHERL_OK);
    cr_assert_str_eq(s, "default");
    expect(json_get_string(root, "t.json", "no", &s), SHERL_EFORMAT,
           "t.json: field 'no' is false, expected a string");
    cJSON_Delete(root);
}

Test(json_util, describe)
{
    cJSON *root = parse_ok("[0.1, 1e-12, 3, \"a long string that is cut after forty bytes, yes\", "
                           "null, true, [], {}]");
    const char *want[] = {"0.1", "1e-12", "3",
                          "the string \"a long string that is cut after forty by\"", "null",
                          "true", "an array", "an object"};
    char buf[96];
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, root)
    {
        json_describe(v, buf, sizeof buf);
        cr_assert_str_eq(buf, want[i], "item %d", i);
        i++;
    }
    json_describe(NULL, buf, sizeof buf);
    cr_assert_str_eq(buf, "missing");
    cJSON_Delete(root);
}
