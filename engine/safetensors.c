/* safetensors reader and writer; see safetensors.h for the format and the guarantees.
 *
 * Reading never trusts the file: the header length is bounded before anything is allocated,
 * the JSON text is checked byte by byte (UTF-8, no raw control characters) before cJSON sees
 * it, and every tensor entry is validated (keys, dtype, shape, byte range) before the table is
 * handed out. Writing goes through a temporary file in the destination folder so a crash never
 * leaves a half-written file under the final name. */
#include "safetensors.h"

#include "kernels.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json_util.h"

#define ST_MAX_EXACT_INT 9007199254740992.0 /* 2^53: largest range where doubles are exact */
#define ST_MAX_EXACT_INT_I ((int64_t)1 << 53)

/* ------------------------------------------------------------------------------------------ */
/* dtypes                                                                                       */

static const struct {
    const char *name;
    st_dtype dt;
    size_t size;
} k_dtypes[] = {
    {"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2}, {"I64", ST_I64, 8},
    {"I32", ST_I32, 4}, {"U8", ST_U8, 1},   {"BOOL", ST_BOOL, 1}, {"F64", ST_F64, 8},
};
#define N_DTYPES ((int)(sizeof k_dtypes / sizeof k_dtypes[0]))

/* Valid safetensors dtypes that this reader does not load. */
static const char *const k_other_dtypes[] = {
    "I8", "I16", "U16", "U32", "U64", "C64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2",
};

const char *st_dtype_name(st_dtype dt)
{
    for (int i = 0; i < N_DTYPES; i++)
        if (k_dtypes[i].dt == dt)
            return k_dtypes[i].name;
    return "?";
}

size_t st_dtype_size(st_dtype dt)
{
    for (int i = 0; i < N_DTYPES; i++)
        if (k_dtypes[i].dt == dt)
            return k_dtypes[i].size;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* half-precision conversions: the kernels' own (kernels.h), so a file's values and the
 * backends' roundings agree bit for bit */

float st_f16_to_f32(uint16_t h) { return sherl_f16_to_f32(h); }
float st_bf16_to_f32(uint16_t h) { return sherl_bf16_to_f32(h); }
uint16_t st_f32_to_f16(float f) { return sherl_f32_to_f16(f); }
uint16_t st_f32_to_bf16(float f) { return sherl_f32_to_bf16(f); }

/* ------------------------------------------------------------------------------------------ */
/* helpers                                                                                      */

#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
/* big-endian hosts assemble fp32 values byte by byte */
static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
#endif

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void store_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void fmt_shape(char *buf, size_t cap, const int64_t *shape, int ndim)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

/* A JSON number that is an exact non-negative integer <= 2^53. */
static int json_uint53(const cJSON *v, int64_t *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (!isfinite(d) || d < 0 || d > ST_MAX_EXACT_INT || floor(d) != d)
        return 0;
    *out = (int64_t)d;
    return 1;
}

/* "label: tensor 'name': detail" */
static sherl_status tensor_err(sherl_code code, const char *label, const char *tname,
                               const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static sherl_status tensor_err(sherl_code code, const char *label, const char *tname,
                               const char *fmt, ...)
{
    char detail[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return sherl_errorf(code, "%.160s: tensor '%.120s': %s", label, tname, detail);
}

/* The header must be UTF-8 text with no raw control characters other than JSON whitespace
 * (raw control bytes are never valid JSON, and cJSON would otherwise skip some of them);
 * allow_control lifts the second rule (for strings we escape ourselves). Returns the offset of
 * the first bad byte, or n when all is well. */
static size_t check_text(const uint8_t *s, size_t n, int allow_control)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            if (!allow_control && ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f))
                return i;
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
            cp = c & 0x1fu;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            cp = c & 0x0fu;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            cp = c & 0x07u;
        } else {
            return i;
        }
        if (n - i < len)
            return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3fu);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
            return i;
        i += len;
    }
    return n;
}

/* ------------------------------------------------------------------------------------------ */
/* parsing                                                                                      */

static void free_tables(safetensors_file *f)
{
    for (int i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < 2 * f->n_metadata; i++)
        free(f->metadata[i]);
    free(f->metadata);
    f->tensors = NULL;
    f->metadata = NULL;
    f->n_tensors = 0;
    f->n_metadata = 0;
}

static sherl_status parse_tensor(st_tensor *t, const cJSON *item, const uint8_t *data,
                                 size_t data_size, const char *label)
{
    const char *name = t->name;
    char desc[96];
    if (!cJSON_IsObject(item)) {
        json_describe(item, desc, sizeof desc);
        return tensor_err(SHERL_EFORMAT, label, name,
                          "entry is %s, expected an object with \"dtype\", \"shape\" and "
                          "\"data_offsets\"", desc);
    }
    const cJSON *jd = NULL, *js = NULL, *jo = NULL;
    for (const cJSON *c = item->child; c; c = c->next) {
        const cJSON **slot;
        if (strcmp(c->string, "dtype") == 0)
            slot = &jd;
        else if (strcmp(c->string, "shape") == 0)
            slot = &js;
        else if (strcmp(c->string, "data_offsets") == 0)
            slot = &jo;
        else
            return tensor_err(SHERL_EFORMAT, label, name,
                              "unexpected key \"%.60s\" (expected only dtype, shape, data_offsets)",
                              c->string);
        if (*slot)
            return tensor_err(SHERL_EFORMAT, label, name, "key \"%s\" appears more than once",
                              c->string);
        *slot = c;
    }
    if (!jd || !js || !jo)
        return tensor_err(SHERL_EFORMAT, label, name, "missing \"%s\"",
                          !jd ? "dtype" : !js ? "shape" : "data_offsets");

    /* dtype */
    if (!cJSON_IsString(jd)) {
        json_describe(jd, desc, sizeof desc);
        return tensor_err(SHERL_EFORMAT, label, name, "dtype is %s, expected a string", desc);
    }
    int found = -1;
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(jd->valuestring, k_dtypes[i].name) == 0)
            found = i;
    if (found < 0) {
        for (size_t i = 0; i < sizeof k_other_dtypes / sizeof k_other_dtypes[0]; i++)
            if (strcmp(jd->valuestring, k_other_dtypes[i]) == 0)
                return tensor_err(SHERL_EUNSUPPORTED, label, name,
                                  "dtype %s is not supported (supported: F32, F16, BF16, F64, "
                                  "I64, I32, U8, BOOL)", jd->valuestring);
        return tensor_err(SHERL_EFORMAT, label, name,
                          "unknown dtype \"%.40s\" (supported: F32, F16, BF16, F64, I64, I32, "
                          "U8, BOOL)", jd->valuestring);
    }
    t->dtype = k_dtypes[found].dt;
    size_t esize = k_dtypes[found].size;

    /* shape */
    if (!cJSON_IsArray(js)) {
        json_describe(js, desc, sizeof desc);
        return tensor_err(SHERL_EFORMAT, label, name, "shape is %s, expected an array", desc);
    }
    int ndim = 0;
    int64_t numel = 1;
    int too_many = 0;
    for (const cJSON *c = js->child; c; c = c->next) {
        if (ndim == SAFETENSORS_MAX_DIMS)
            return tensor_err(SHERL_EFORMAT, label, name, "shape has more than %d dimensions",
                              SAFETENSORS_MAX_DIMS);
        int64_t v;
        if (!json_uint53(c, &v)) {
            json_describe(c, desc, sizeof desc);
            return tensor_err(SHERL_EFORMAT, label, name,
                              "shape dimension %d is %s, expected an integer in [0, 2^53]", ndim,
                              desc);
        }
        t->shape[ndim++] = v;
        if (__builtin_mul_overflow(numel, v, &numel) || numel > ST_MAX_EXACT_INT_I)
            too_many = 1, numel = ST_MAX_EXACT_INT_I; /* keep going: a later 0 does not rescue */
    }
    t->ndim = ndim;
    char shape_s[160];
    fmt_shape(shape_s, sizeof shape_s, t->shape, ndim);
    int64_t need;
    if (too_many || __builtin_mul_overflow(numel, (int64_t)esize, &need))
        return tensor_err(SHERL_EFORMAT, label, name, "shape %s has too many elements", shape_s);
    t->numel = numel;

    /* data_offsets */
    int64_t off[2];
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2) {
        json_describe(jo, desc, sizeof desc);
        return tensor_err(SHERL_EFORMAT, label, name,
                          "data_offsets is %s, expected an array [begin, end]", desc);
    }
    for (int i = 0; i < 2; i++) {
        const cJSON *c = cJSON_GetArrayItem(jo, i);
        if (!json_uint53(c, &off[i])) {
            json_describe(c, desc, sizeof desc);
            return tensor_err(SHERL_EFORMAT, label, name,
                              "data_offsets %s is %s, expected an integer in [0, 2^53]",
                              i ? "end" : "begin", desc);
        }
    }
    if (off[0] > off[1])
        return tensor_err(SHERL_EFORMAT, label, name, "data_offsets [%lld, %lld] end before they begin",
                          (long long)off[0], (long long)off[1]);
    if ((uint64_t)off[1] > (uint64_t)data_size)
        return tensor_err(SHERL_EFORMAT, label, name,
                          "data_offsets [%lld, %lld] run past the end of the data section "
                          "(%zu bytes): file truncated or corrupt",
                          (long long)off[0], (long long)off[1], data_size);
    if (off[1] - off[0] != need)
        return tensor_err(SHERL_EFORMAT, label, name,
                          "data_offsets [%lld, %lld] hold %lld bytes but shape %s of %s needs %lld",
                          (long long)off[0], (long long)off[1], (long long)(off[1] - off[0]),
                          shape_s, k_dtypes[found].name, (long long)need);
    t->data = data + off[0];
    t->nbytes = (size_t)need;
    return sherl_ok();
}

static sherl_status parse_metadata(safetensors_file *f, const cJSON *meta, const char *label)
{
    char desc[96];
    if (!cJSON_IsObject(meta)) {
        json_describe(meta, desc, sizeof desc);
        return sherl_errorf(SHERL_EFORMAT, "%.160s: \"__metadata__\" is %s, expected an object of strings",
                            label, desc);
    }
    int n = 0;
    for (const cJSON *c = meta->child; c; c = c->next)
        n++;
    if (n == 0)
        return sherl_ok();
    f->metadata = calloc((size_t)n * 2, sizeof *f->metadata);
    if (!f->metadata)
        return sherl_errorf(SHERL_ENOMEM, "%.160s: out of memory reading metadata", label);
    for (const cJSON *c = meta->child; c; c = c->next) {
        if (!cJSON_IsString(c)) {
            json_describe(c, desc, sizeof desc);
            return sherl_errorf(SHERL_EFORMAT,
                                "%.160s: \"__metadata__\" key '%.120s' is %s, expected a string",
                                label, c->string, desc);
        }
        char *k = strdup(c->string), *v = strdup(c->valuestring);
        if (!k || !v) {
            free(k);
            free(v);
            return sherl_errorf(SHERL_ENOMEM, "%.160s: out of memory reading metadata", label);
        }
        f->metadata[2 * f->n_metadata] = k;
        f->metadata[2 * f->n_metadata + 1] = v;
        f->n_metadata++;
    }
    return sherl_ok();
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_meta_key(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_tensor_range(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->data != y->data)
        return x->data < y->data ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

static sherl_status build_tables(safetensors_file *f, const cJSON *root, const uint8_t *data,
                                 size_t data_size, const char *label)
{
    int n_items = 0;
    for (const cJSON *c = root->child; c; c = c->next)
        n_items++;
    if (n_items > 0) {
        f->tensors = calloc((size_t)n_items, sizeof *f->tensors);
        if (!f->tensors)
            return sherl_errorf(SHERL_ENOMEM, "%.160s: out of memory for %d tensors", label, n_items);
    }
    int seen_meta = 0;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) {
            if (seen_meta++)
                return sherl_errorf(SHERL_EFORMAT, "%.160s: \"__metadata__\" appears more than once",
                                    label);
            SHERL_TRY(parse_metadata(f, c, label));
            continue;
        }
        if (c->string[0] == '\0')
            return sherl_errorf(SHERL_EFORMAT, "%.160s: a tensor has an empty name", label);
        st_tensor *t = &f->tensors[f->n_tensors];
        t->name = strdup(c->string);
        if (!t->name)
            return sherl_errorf(SHERL_ENOMEM, "%.160s: out of memory", label);
        f->n_tensors++;
        SHERL_TRY(parse_tensor(t, c, data, data_size, label));
    }

    if (f->n_tensors > 1) {
        qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
        for (int i = 1; i < f->n_tensors; i++)
            if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
                return tensor_err(SHERL_EFORMAT, label, f->tensors[i].name,
                                  "name appears more than once in the header");
    }
    if (f->n_metadata > 1) {
        qsort(f->metadata, (size_t)f->n_metadata, 2 * sizeof *f->metadata, cmp_meta_key);
        for (int i = 1; i < f->n_metadata; i++)
            if (strcmp(f->metadata[2 * i - 2], f->metadata[2 * i]) == 0)
                return sherl_errorf(SHERL_EFORMAT,
                                    "%.160s: \"__metadata__\" key '%.120s' appears more than once",
                                    label, f->metadata[2 * i]);
    }

    /* Overlap: sort non-empty ranges by start; each must begin at or after the furthest end. */
    if (f->n_tensors > 1) {
        const st_tensor **order = malloc((size_t)f->n_tensors * sizeof *order);
        if (!order)
            return sherl_errorf(SHERL_ENOMEM, "%.160s: out of memory", label);
        int m = 0;
        for (int i = 0; i < f->n_tensors; i++)
            if (f->tensors[i].nbytes > 0)
                order[m++] = &f->tensors[i];
        qsort(order, (size_t)m, sizeof *order, cmp_tensor_range);
        sherl_status st = sherl_ok();
        for (int i = 1; i < m; i++) {
            const st_tensor *a = order[i - 1], *b = order[i];
            if (b->data < a->data + a->nbytes) {
                long long ab = (long long)(a->data - data), bb = (long long)(b->data - data);
                st = tensor_err(SHERL_EFORMAT, label, b->name,
                                "data_offsets [%lld, %lld] overlap those of tensor '%.100s' "
                                "[%lld, %lld]",
                                bb, bb + (long long)b->nbytes, a->name, ab,
                                ab + (long long)a->nbytes);
                break;
            }
        }
        free(order);
        if (st.code != SHERL_OK)
            return st;
    }
    return sherl_ok();
}

sherl_status safetensors_parse(safetensors_file *f, const uint8_t *buf, size_t len, const char *label)
{
    if (!f)
        return sherl_errorf(SHERL_EINVAL, "safetensors_parse: NULL file");
    memset(f, 0, sizeof *f);
    if (!label)
        label = "<safetensors buffer>";
    snprintf(f->path, sizeof f->path, "%s", label);
    if (!buf && len)
        return sherl_errorf(SHERL_EINVAL, "%.160s: NULL buffer", label);
    if (len < 8)
        return sherl_errorf(SHERL_EFORMAT,
                            "%.160s: file is %zu bytes, too short for a safetensors header "
                            "(8-byte length, then JSON)", label, len);
    uint64_t n = load_le64(buf);
    if (n > SAFETENSORS_MAX_HEADER)
        return sherl_errorf(SHERL_EFORMAT,
                            "%.160s: header length %llu is over the limit of %u bytes: not a "
                            "safetensors file, or corrupt", label, (unsigned long long)n,
                            SAFETENSORS_MAX_HEADER);
    if (n > len - 8)
        return sherl_errorf(SHERL_EFORMAT,
                            "%.160s: header length %llu runs past the end of the file (%zu bytes): "
                            "file truncated or corrupt", label, (unsigned long long)n, len);
    const uint8_t *hdr = buf + 8;
    if (n < 2 || hdr[0] != '{')
        return sherl_errorf(SHERL_EFORMAT,
                            "%.160s: header (%llu bytes) does not start with a JSON object '{'",
                            label, (unsigned long long)n);
    size_t bad = check_text(hdr, (size_t)n, 0);
    if (bad < n)
        return sherl_errorf(SHERL_EFORMAT,
                            "%.160s: header byte %zu (0x%02x) is not valid in JSON text "
                            "(control character or invalid UTF-8)", label, bad, hdr[bad]);

    cJSON *root = NULL;
    sherl_status st = json_parse((const char *)hdr, (size_t)n, label, "header", &root);
    if (st.code == SHERL_OK)
        st = json_expect_object(root, label, "header");
    if (st.code == SHERL_OK)
        st = build_tables(f, root, hdr + n, len - 8 - (size_t)n, label);
    cJSON_Delete(root);
    if (st.code != SHERL_OK)
        free_tables(f);
    return st;
}

sherl_status safetensors_open(safetensors_file *f, const char *path)
{
    if (!f || !path)
        return sherl_errorf(SHERL_EINVAL, "safetensors_open: NULL argument");
    memset(f, 0, sizeof *f);
    /* O_NONBLOCK: opening a FIFO nobody writes would otherwise wait forever, before the
     * check below could refuse it */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return sherl_errorf(SHERL_EIO, "%.300s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return sherl_errorf(SHERL_EIO, "%.300s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return sherl_errorf(SHERL_EIO, "%.300s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) {
        close(fd);
        return sherl_errorf(SHERL_EFORMAT,
                            "%.300s: file is %zu bytes, too short for a safetensors header "
                            "(8-byte length, then JSON)", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return sherl_errorf(SHERL_EIO, "%.300s: cannot map %zu bytes: %s", path, size, strerror(e));
    sherl_status st = safetensors_parse(f, map, size, path);
    if (st.code != SHERL_OK) {
        munmap(map, size);
        return st;
    }
    f->map = map;
    f->map_size = size;
    return st;
}

void safetensors_close(safetensors_file *f)
{
    if (!f)
        return;
    free_tables(f);
    if (f->map)
        munmap(f->map, f->map_size);
    memset(f, 0, sizeof *f);
}

const st_tensor *safetensors_find(const safetensors_file *f, const char *name)
{
    if (!f || !name || f->n_tensors <= 0)
        return NULL;
    int lo = 0, hi = f->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->tensors[mid].name);
        if (c == 0)
            return &f->tensors[mid];
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *safetensors_metadata(const safetensors_file *f, const char *key)
{
    if (!f || !key)
        return NULL;
    int lo = 0, hi = f->n_metadata - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(key, f->metadata[2 * mid]);
        if (c == 0)
            return f->metadata[2 * mid + 1];
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* Drops the whole pages inside [p, p + len) of a private read-only mapping from this process's
 * resident set; they are read again from the page cache if touched. Advisory: errors ignored. */
static void drop_pages(const uint8_t *p, size_t len)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1), hi = ((uintptr_t)p + len) & ~(page - 1);
    if (hi > lo)
        (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

sherl_status safetensors_read_f32(const safetensors_file *f, const char *name, float *dst,
                                  int ndim, const int64_t *shape)
{
    if (!f || !name)
        return sherl_errorf(SHERL_EINVAL, "safetensors_read_f32: NULL argument");
    if (ndim < 0 || ndim > SAFETENSORS_MAX_DIMS || (ndim > 0 && !shape))
        return sherl_errorf(SHERL_EINVAL, "%.160s: tensor '%.120s': bad expected shape (ndim %d)",
                            f->path, name, ndim);
    const st_tensor *t = safetensors_find(f, name);
    if (!t)
        return sherl_errorf(SHERL_EFORMAT, "%.160s: no tensor named '%.120s' (file has %d tensors)",
                            f->path, name, f->n_tensors);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return tensor_err(SHERL_EUNSUPPORTED, f->path, name,
                          "dtype %s cannot be read as fp32 (convertible dtypes: F32, F16, BF16)",
                          st_dtype_name(t->dtype));
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char have[160], want[160];
        fmt_shape(have, sizeof have, t->shape, t->ndim);
        fmt_shape(want, sizeof want, shape, ndim);
        return tensor_err(SHERL_EFORMAT, f->path, name, "shape is %s but %s was expected", have,
                          want);
    }
    if (t->numel > 0 && !dst)
        return sherl_errorf(SHERL_EINVAL, "%.160s: tensor '%.120s': NULL destination", f->path, name);
    /* Chunk by chunk, dropping each chunk's pages of a mapped file once converted: a tensor is
     * read once, and this keeps the loader's resident memory at the copy it makes (the page
     * cache keeps the file) rather than copy + mapping, which the memory planner relies on. */
    const size_t chunk = (size_t)1 << 20; /* elements */
    for (size_t lo = 0; lo < (size_t)t->numel; lo += chunk) {
        size_t n = (size_t)t->numel - lo < chunk ? (size_t)t->numel - lo : chunk;
        size_t esz = st_dtype_size(t->dtype);
        const uint8_t *p = t->data + lo * esz;
        float *out = dst + lo;
        switch (t->dtype) {
        case ST_F32:
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            memcpy(out, p, n * sizeof(float));
#else
            for (size_t i = 0; i < n; i++, p += 4)
                out[i] = bits_to_f32((uint32_t)p[0] | (uint32_t)p[1] << 8 |
                                     (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
#endif
            break;
        case ST_F16:
            for (size_t i = 0; i < n; i++, p += 2)
                out[i] = st_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
            break;
        case ST_BF16:
            for (size_t i = 0; i < n; i++, p += 2)
                out[i] = st_bf16_to_f32((uint16_t)(p[0] | p[1] << 8));
            break;
        default:
            break;
        }
        if (f->map)
            drop_pages(t->data + lo * esz, n * esz);
    }
    return sherl_ok();
}

/* ------------------------------------------------------------------------------------------ */
/* writing                                                                                      */

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(strbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* JSON string with escapes. */
static void sb_json_string(strbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"')
            sb_puts(b, "\\\"");
        else if (*p == '\\')
            sb_puts(b, "\\\\");
        else if (*p == '\n')
            sb_puts(b, "\\n");
        else if (*p == '\t')
            sb_puts(b, "\\t");
        else if (*p == '\r')
            sb_puts(b, "\\r");
        else if (*p < 0x20 || *p == 0x7f)
            sb_printf(b, "\\u%04x", *p);
        else
            sb_put(b, (const char *)p, 1);
    }
    sb_put(b, "\"", 1);
}

static int write_all(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_f32_le(int fd, const float *x, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return n ? write_all(fd, x, n * sizeof(float)) : 0;
#else
    uint8_t chunk[65536];
    while (n > 0) {
        size_t m = n < sizeof chunk / 4 ? n : sizeof chunk / 4;
        for (size_t i = 0; i < m; i++) {
            uint32_t u = f32_to_bits(x[i]);
            for (int k = 0; k < 4; k++)
                chunk[4 * i + k] = (uint8_t)(u >> (8 * k));
        }
        if (write_all(fd, chunk, m * 4) != 0)
            return -1;
        x += m;
        n -= m;
    }
    return 0;
#endif
}

static int is_utf8(const char *s)
{
    size_t n = strlen(s);
    return check_text((const uint8_t *)s, n, 1) == n;
}

static sherl_status check_write_args(const char *path, const st_write_tensor *tensors, int n,
                                     const char *const *metadata)
{
    if (!path || !*path)
        return sherl_errorf(SHERL_EINVAL, "safetensors_write_f32: empty path");
    if (n < 0 || (n > 0 && !tensors))
        return sherl_errorf(SHERL_EINVAL, "%.160s: bad tensor list (n = %d)", path, n);
    for (int i = 0; i < n; i++) {
        const st_write_tensor *t = &tensors[i];
        if (!t->name || !*t->name || strcmp(t->name, "__metadata__") == 0)
            return sherl_errorf(SHERL_EINVAL, "%.160s: tensor %d has an empty or reserved name",
                                path, i);
        if (!is_utf8(t->name))
            return sherl_errorf(SHERL_EINVAL, "%.160s: tensor %d: name is not valid UTF-8", path, i);
        if (t->ndim < 0 || t->ndim > SAFETENSORS_MAX_DIMS)
            return tensor_err(SHERL_EINVAL, path, t->name, "ndim %d is outside [0, %d]", t->ndim,
                              SAFETENSORS_MAX_DIMS);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0 || __builtin_mul_overflow(numel, t->shape[d], &numel) ||
                numel > ST_MAX_EXACT_INT_I / 4)
                return tensor_err(SHERL_EINVAL, path, t->name, "bad shape (dimension %d is %lld)",
                                  d, (long long)t->shape[d]);
        }
        if (numel > 0 && !t->data)
            return tensor_err(SHERL_EINVAL, path, t->name, "NULL data");
        for (int j = 0; j < i; j++)
            if (strcmp(tensors[j].name, t->name) == 0)
                return tensor_err(SHERL_EINVAL, path, t->name, "name given twice");
    }
    if (metadata) {
        for (int i = 0; metadata[2 * i]; i++) {
            if (!metadata[2 * i + 1])
                return sherl_errorf(SHERL_EINVAL, "%.160s: metadata key '%.120s' has no value",
                                    path, metadata[2 * i]);
            if (!is_utf8(metadata[2 * i]) || !is_utf8(metadata[2 * i + 1]))
                return sherl_errorf(SHERL_EINVAL, "%.160s: metadata entry %d is not valid UTF-8",
                                    path, i);
            for (int j = 0; j < i; j++)
                if (strcmp(metadata[2 * j], metadata[2 * i]) == 0)
                    return sherl_errorf(SHERL_EINVAL, "%.160s: metadata key '%.120s' given twice",
                                        path, metadata[2 * i]);
        }
    }
    return sherl_ok();
}

static int64_t write_numel(const st_write_tensor *t)
{
    int64_t numel = 1;
    for (int d = 0; d < t->ndim; d++)
        numel *= t->shape[d];
    return numel;
}

sherl_status safetensors_write_f32(const char *path, const st_write_tensor *tensors, int n,
                                   const char *const *metadata)
{
    SHERL_TRY(check_write_args(path, tensors, n, metadata));

    /* Header, in the reference layout: metadata first, then tensors in order. */
    strbuf h = {0};
    sb_puts(&h, "{");
    int first = 1;
    if (metadata && metadata[0]) {
        sb_puts(&h, "\"__metadata__\":{");
        for (int i = 0; metadata[2 * i]; i++) {
            if (i)
                sb_puts(&h, ",");
            sb_json_string(&h, metadata[2 * i]);
            sb_puts(&h, ":");
            sb_json_string(&h, metadata[2 * i + 1]);
        }
        sb_puts(&h, "}");
        first = 0;
    }
    int64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const st_write_tensor *t = &tensors[i];
        if (!first)
            sb_puts(&h, ",");
        first = 0;
        sb_json_string(&h, t->name);
        sb_puts(&h, ":{\"dtype\":\"F32\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++)
            sb_printf(&h, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        int64_t nb = write_numel(t) * 4;
        sb_printf(&h, "],\"data_offsets\":[%lld,%lld]}", (long long)offset, (long long)(offset + nb));
        offset += nb;
    }
    sb_puts(&h, "}");
    while (!h.oom && h.len % 8 != 0) /* the reference pads with spaces to 8-byte alignment */
        sb_puts(&h, " ");
    if (h.oom) {
        free(h.p);
        return sherl_errorf(SHERL_ENOMEM, "%.160s: out of memory building the header", path);
    }
    if (h.len > SAFETENSORS_MAX_HEADER) {
        free(h.p);
        return sherl_errorf(SHERL_EINVAL, "%.160s: header would be %zu bytes, over the %u limit",
                            path, h.len, SAFETENSORS_MAX_HEADER);
    }

    /* Temporary file beside the destination. */
    static unsigned counter;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 64);
    if (!tmp) {
        free(h.p);
        return sherl_errorf(SHERL_ENOMEM, "%.160s: out of memory", path);
    }
    int fd = -1;
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        unsigned c = __atomic_fetch_add(&counter, 1u, __ATOMIC_RELAXED);
        snprintf(tmp, plen + 64, "%s.tmp.%ld.%u", path, (long)getpid(), c);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    if (fd < 0) {
        int e = errno;
        free(h.p);
        sherl_status st = sherl_errorf(SHERL_EIO, "%.300s: cannot create temporary file: %s", path,
                                       strerror(e));
        free(tmp);
        return st;
    }

    sherl_status st = sherl_ok();
    uint8_t lenbuf[8];
    store_le64(lenbuf, (uint64_t)h.len);
    const char *what = "write";
    int ok = write_all(fd, lenbuf, 8) == 0 && write_all(fd, h.p, h.len) == 0;
    for (int i = 0; ok && i < n; i++)
        ok = write_f32_le(fd, tensors[i].data, (size_t)write_numel(&tensors[i])) == 0;
    if (ok && fsync(fd) != 0) {
        what = "fsync";
        ok = 0;
    }
    int e = errno;
    if (close(fd) != 0 && ok) {
        e = errno;
        what = "close";
        ok = 0;
    }
    if (ok && rename(tmp, path) != 0) {
        e = errno;
        what = "rename";
        ok = 0;
    }
    if (!ok) {
        st = sherl_errorf(SHERL_EIO, "%.300s: %s failed: %s", path, what, strerror(e));
        unlink(tmp);
    } else {
        /* Make the rename durable: fsync the folder. */
        char *dir = strdup(path);
        if (dir) {
            char *slash = strrchr(dir, '/');
            const char *d = ".";
            if (slash == dir)
                d = "/";
            else if (slash) {
                *slash = '\0';
                d = dir;
            }
            int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) {
                if (fsync(dfd) != 0 && errno != EINVAL)
                    st = sherl_errorf(SHERL_EIO, "%.300s: fsync of the folder failed: %s", path,
                                      strerror(errno));
                close(dfd);
            }
            free(dir);
        }
    }
    free(tmp);
    free(h.p);
    return st;
}
