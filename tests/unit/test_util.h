/* Small helpers shared by the unit tests: where the build puts test files and the model, writing
 * a file, finding a file of the real model. Header-only (static inline): each test is its own
 * executable. */
#ifndef SHERL_TEST_UTIL_H
#define SHERL_TEST_UTIL_H

#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Both come from sherl_unit_test() in tests/CMakeLists.txt. */
#ifndef SHERL_TEST_WORK
#define SHERL_TEST_WORK "/tmp"
#endif
#ifndef SHERL_MINILM_DIR
#define SHERL_MINILM_DIR ""
#endif

/* Creates (or replaces) `path` holding the len bytes at data; any failure fails the test. */
static inline void write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot create %s: %s", path, strerror(errno));
    cr_assert_eq(fwrite(data, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
}

/* The path of `name` in the all-MiniLM-L6-v2 folder, into out; fails the test when the model is
 * not installed (the model is a declared dependency, not an optional one). */
static inline void minilm_file(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", SHERL_MINILM_DIR, name);
    struct stat sb;
    if (!SHERL_MINILM_DIR[0] || stat(out, &sb) != 0)
        cr_assert_fail("all-MiniLM-L6-v2 not found at '%s': run scripts/bootstrap", SHERL_MINILM_DIR);
}

/* {"a":[[[...]]]} with `depth` nested arrays, NUL-terminated (free() it): deeper than any JSON
 * parser here accepts when depth is large. */
static inline char *nested_json(size_t depth)
{
    char *s = malloc(2 * depth + 32);
    cr_assert_not_null(s);
    size_t k = (size_t)sprintf(s, "{\"a\":");
    for (size_t i = 0; i < depth; i++)
        s[k++] = '[';
    for (size_t i = 0; i < depth; i++)
        s[k++] = ']';
    s[k++] = '}';
    s[k] = '\0';
    return s;
}

#endif
