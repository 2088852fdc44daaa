/* Path confinement (daemon/confine.c): symlinks, "..", prefix look-alikes and missing files
 * are judged by where they really lead. */
#include <criterion/criterion.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "confine.h"

static char top[64], root[1][1024];

static void touch(const char *rel)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", top, rel);
    FILE *f = fopen(p, "w");
    cr_assert(f, "%s", p);
    fclose(f);
}

static void setup(void)
{
    snprintf(top, sizeof top, "/tmp/sherl-confine-XXXXXX");
    cr_assert(mkdtemp(top));
    char p[256];
    snprintf(p, sizeof p, "%s/data", top), mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/data/sub", top), mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/database", top), mkdir(p, 0755);
    touch("data/train.jsonl");
    touch("data/sub/val.jsonl");
    touch("database/secret.jsonl");
    touch("outside.jsonl");
    char target[256];
    snprintf(p, sizeof p, "%s/data/escape.jsonl", top);
    snprintf(target, sizeof target, "%s/outside.jsonl", top);
    cr_assert(symlink(target, p) == 0);
    snprintf(p, sizeof p, "%s/data/inner-link", top);
    cr_assert(symlink("sub/val.jsonl", p) == 0);
    snprintf(root[0], sizeof root[0], "%s/data/", top); /* a trailing slash must not matter */
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", top);
    cr_assert(system(cmd) == 0);
}

TestSuite(confine, .init = setup, .fini = teardown);

static sherl_status check(const char *path, const char *base, char *resolved)
{
    return confine_path("data.train", path, base, (const char(*)[1024])root, 1, resolved);
}

Test(confine, inside_paths_resolve)
{
    char res[PATH_MAX], p[256], want[PATH_MAX];
    snprintf(p, sizeof p, "%s/data/train.jsonl", top);
    sherl_status st = check(p, NULL, res);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    cr_assert(realpath(p, want));
    cr_expect_str_eq(res, want);
    snprintf(p, sizeof p, "%s/data", top);
    cr_expect(check("sub/../train.jsonl", p, res).code == SHERL_OK);
    cr_expect(check("inner-link", p, res).code == SHERL_OK, "a symlink that stays inside");
    cr_expect(check(p, NULL, res).code == SHERL_OK, "the root itself");
}

Test(confine, escapes_are_refused_with_the_field_named)
{
    char res[PATH_MAX], p[256], base[256];
    snprintf(base, sizeof base, "%s/data", top);
    const char *bad[] = {"escape.jsonl", "../outside.jsonl", "../database/secret.jsonl",
                         "sub/../../outside.jsonl"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sherl_status st = check(bad[i], base, res);
        cr_expect(st.code == SHERL_EINVAL, "%s accepted (resolved %s)", bad[i], res);
        cr_expect(strstr(st.msg, "data.train: ") && strstr(st.msg, "outside every data root"),
                  "%s: %s", bad[i], st.msg);
    }
    snprintf(p, sizeof p, "%s/database/secret.jsonl", top); /* /data is a prefix of /database */
    cr_expect(check(p, NULL, res).code == SHERL_EINVAL);
    sherl_status st = check("missing.jsonl", base, res);
    cr_expect(st.code == SHERL_EINVAL && strstr(st.msg, "No such file"), "%s", st.msg);
    st = check("relative.jsonl", NULL, res);
    cr_expect(st.code == SHERL_EINVAL && strstr(st.msg, "must be an absolute path"), "%s", st.msg);
    st = check("", base, res);
    cr_expect(st.code == SHERL_EINVAL && strstr(st.msg, "empty path"), "%s", st.msg);
    cr_expect(confine_path("backbone", p, NULL, NULL, 0, res).code == SHERL_EINVAL,
              "no roots: nothing is allowed");
}
