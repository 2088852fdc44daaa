/* Shared JSON helpers; see json_util.h. */
#include "json_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------ */
/* reading a file                                                                               */

static sherl_status too_large(const char *path, long long size, size_t max_bytes)
{
    if (size >= 0)
        return sherl_errorf(SHERL_EFORMAT, "%.300s: file is too large: %lld bytes (limit %zu)",
                            path, size, max_bytes);
    return sherl_errorf(SHERL_EFORMAT, "%.300s: file is too large (limit %zu bytes)", path,
                        max_bytes);
}

sherl_status sherl_read_file(const char *path, size_t max_bytes, char **data, size_t *len)
{
    if (!data || !len)
        return sherl_errorf(SHERL_EINVAL, "sherl_read_file: NULL argument");
    *data = NULL;
    *len = 0;
    if (!path)
        return sherl_errorf(SHERL_EINVAL, "sherl_read_file: NULL path");
    if (max_bytes > SIZE_MAX / 2)
        max_bytes = SIZE_MAX / 2;
    /* Opened without blocking, so a FIFO nobody writes reads as empty instead of hanging the
     * caller in open(); reads then block as usual, for a pipe that has a writer. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return sherl_errorf(SHERL_EIO, "%.300s: cannot open: %s", path, strerror(errno));
    int fl = fcntl(fd, F_GETFL);
    FILE *f = fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0 ? NULL : fdopen(fd, "rb");
    if (!f) {
        int e = errno;
        close(fd);
        return sherl_errorf(SHERL_EIO, "%.300s: cannot open: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        int e = errno;
        fclose(f);
        return sherl_errorf(SHERL_EIO, "%.300s: cannot read: %s", path, strerror(e));
    }
    if (S_ISDIR(sb.st_mode)) {
        fclose(f);
        return sherl_errorf(SHERL_EIO, "%.300s: is a directory, not a file", path);
    }
    /* A regular file's size is known up front; anything else (a pipe) is read in growing
     * steps. Either way the read stops one byte past the limit, so a file that grows while it
     * is read cannot slip through. */
    size_t cap = 65536;
    if (S_ISREG(sb.st_mode)) {
        if ((unsigned long long)sb.st_size > max_bytes) {
            fclose(f);
            return too_large(path, (long long)sb.st_size, max_bytes);
        }
        cap = (size_t)sb.st_size + 1;
    }
    if (cap > max_bytes + 1)
        cap = max_bytes + 1;
    char *buf = malloc(cap + 1);
    if (!buf) {
        fclose(f);
        return sherl_errorf(SHERL_ENOMEM, "%.300s: out of memory", path);
    }
    size_t n = 0;
    for (;;) {
        if (n == cap) {
            if (cap > max_bytes) {
                free(buf);
                fclose(f);
                return too_large(path, -1, max_bytes);
            }
            size_t nc = cap > max_bytes / 2 ? max_bytes + 1 : 2 * cap;
            char *p = realloc(buf, nc + 1);
            if (!p) {
                free(buf);
                fclose(f);
                return sherl_errorf(SHERL_ENOMEM, "%.300s: out of memory", path);
            }
            buf = p;
            cap = nc;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                int e = errno;
                free(buf);
                fclose(f);
                return sherl_errorf(SHERL_EIO, "%.300s: cannot read: %s", path, strerror(e));
            }
            break;
        }
    }
    fclose(f);
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return sherl_ok();
}

/* ------------------------------------------------------------------------------------------ */
/* parsing                                                                                      */

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

static int is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* "what " / "what is " style prefixes for messages; empty when what is NULL. */
static void prefix(char *buf, size_t cap, const char *what, const char *verb)
{
    if (what && what[0])
        snprintf(buf, cap, "%.40s%s", what, verb);
    else
        buf[0] = '\0';
}

/* text[len] must be '\0'. */
static sherl_status parse_terminated(const char *text, size_t len, const char *label,
                                     const char *what, cJSON **root)
{
    *root = NULL;
    char pre[64];
    const char *nul = memchr(text, '\0', len);
    if (nul) {
        prefix(pre, sizeof pre, what, " ");
        return sherl_errorf(SHERL_EFORMAT, "%.200s: %sJSON text contains a NUL byte at offset %zu",
                            label, pre, (size_t)(nul - text));
    }
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!v) {
        if (json_too_deep(text, len, CJSON_NESTING_LIMIT)) {
            prefix(pre, sizeof pre, what, " ");
            return sherl_errorf(SHERL_EFORMAT, "%.200s: %sJSON nests deeper than %d levels", label,
                                pre, CJSON_NESTING_LIMIT);
        }
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
        prefix(pre, sizeof pre, what, " is ");
        return sherl_errorf(SHERL_EFORMAT,
                            "%.200s: %snot valid JSON (error near line %d, column %d: byte %zu of "
                            "%zu)", label, pre, line, col, pos, len);
    }
    size_t pos = end && end >= text && end <= text + len ? (size_t)(end - text) : len;
    while (pos < len && is_json_space(text[pos]))
        pos++;
    if (pos < len) {
        cJSON_Delete(v);
        prefix(pre, sizeof pre, what, " has ");
        return sherl_errorf(SHERL_EFORMAT,
                            "%.200s: %sunexpected data after the JSON value (byte %zu of %zu)",
                            label, pre, pos, len);
    }
    *root = v;
    return sherl_ok();
}

sherl_status json_parse(const char *text, size_t len, const char *label, const char *what,
                        cJSON **root)
{
    if (!root)
        return sherl_errorf(SHERL_EINVAL, "json_parse: NULL result");
    *root = NULL;
    if (!label)
        label = "<JSON text>";
    if (!text && len)
        return sherl_errorf(SHERL_EINVAL, "%.200s: NULL text", label);
    if (len > SIZE_MAX - 1)
        return sherl_errorf(SHERL_EINVAL, "%.200s: text too long", label);
    /* cJSON gets a NUL-terminated private copy, so nothing can read past the text. */
    char *copy = malloc(len + 1);
    if (!copy)
        return sherl_errorf(SHERL_ENOMEM, "%.200s: out of memory for %zu bytes of JSON", label,
                            len);
    if (len)
        memcpy(copy, text, len);
    copy[len] = '\0';
    sherl_status st = parse_terminated(copy, len, label, what, root);
    free(copy);
    return st;
}

sherl_status json_expect_object(const cJSON *root, const char *label, const char *what)
{
    if (cJSON_IsObject(root))
        return sherl_ok();
    char pre[64];
    prefix(pre, sizeof pre, what, " is ");
    return sherl_errorf(SHERL_EFORMAT, "%.200s: %snot a JSON object", label ? label : "<JSON>",
                        pre);
}

sherl_status json_load_object(const char *path, size_t max_bytes, cJSON **root)
{
    if (!root)
        return sherl_errorf(SHERL_EINVAL, "json_load_object: NULL result");
    *root = NULL;
    char *text;
    size_t len;
    SHERL_TRY(sherl_read_file(path, max_bytes, &text, &len));
    cJSON *v;
    sherl_status st = parse_terminated(text, len, path, NULL, &v);
    free(text);
    if (st.code == SHERL_OK)
        st = json_expect_object(v, path, NULL);
    if (st.code != SHERL_OK) {
        cJSON_Delete(v);
        return st;
    }
    *root = v;
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* fields                                                                                       */

/* Shortest of %.15g / %.17g that reads back as the same double. */
static void fmt_double(char *buf, size_t cap, double d)
{
    snprintf(buf, cap, "%.15g", d);
    if (strtod(buf, NULL) != d)
        snprintf(buf, cap, "%.17g", d);
}

void json_describe(const cJSON *v, char *buf, size_t cap)
{
    if (!v)
        snprintf(buf, cap, "missing");
    else if (cJSON_IsNumber(v))
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

sherl_status json_field_error(const char *label, const char *field, const cJSON *value,
                              const char *expected)
{
    char desc[96];
    json_describe(value, desc, sizeof desc);
    return sherl_errorf(SHERL_EFORMAT, "%.200s: field '%.100s' is %s, expected %.120s",
                        label ? label : "<JSON>", field, desc, expected);
}

/* The field, or NULL when it is absent or null. */
static const cJSON *field_value(const cJSON *obj, const char *field)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, field);
    return cJSON_IsNull(v) ? NULL : v;
}

sherl_status json_get_bool(const cJSON *obj, const char *label, const char *field, int *out)
{
    const cJSON *v = field_value(obj, field);
    if (!v)
        return sherl_ok();
    if (!cJSON_IsBool(v))
        return json_field_error(label, field, v, "true or false");
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return sherl_ok();
}

static sherl_status int_value(const cJSON *v, const char *label, const char *field, long long lo,
                              long long hi, int *out)
{
    if (lo < INT_MIN)
        lo = INT_MIN;
    if (hi > INT_MAX)
        hi = INT_MAX;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) ||
        floor(v->valuedouble) != v->valuedouble || v->valuedouble < (double)lo ||
        v->valuedouble > (double)hi) {
        char expected[80];
        snprintf(expected, sizeof expected, "an integer in [%lld, %lld]", lo, hi);
        return json_field_error(label, field, v, expected);
    }
    *out = (int)v->valuedouble;
    return sherl_ok();
}

sherl_status json_get_int(const cJSON *obj, const char *label, const char *field, long long lo,
                          long long hi, int *out)
{
    const cJSON *v = field_value(obj, field);
    return v ? int_value(v, label, field, lo, hi, out) : sherl_ok();
}

sherl_status json_require_int(const cJSON *obj, const char *label, const char *field,
                              long long lo, long long hi, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, field); /* null: a wrong value */
    if (!v)
        return sherl_errorf(SHERL_EFORMAT,
                            "%.200s: field '%.100s' is missing (expected an integer in [%lld, %lld])",
                            label ? label : "<JSON>", field, lo, hi);
    return int_value(v, label, field, lo, hi, out);
}

sherl_status json_get_number(const cJSON *obj, const char *label, const char *field, double *out)
{
    const cJSON *v = field_value(obj, field);
    if (!v)
        return sherl_ok();
    if (!cJSON_IsNumber(v))
        return json_field_error(label, field, v, "a number");
    *out = v->valuedouble;
    return sherl_ok();
}

sherl_status json_get_string(const cJSON *obj, const char *label, const char *field,
                             const char **out)
{
    const cJSON *v = field_value(obj, field);
    if (!v)
        return sherl_ok();
    if (!cJSON_IsString(v))
        return json_field_error(label, field, v, "a string");
    *out = v->valuestring;
    return sherl_ok();
}
