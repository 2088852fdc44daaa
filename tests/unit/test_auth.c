/* Bearer tokens (daemon/auth.c): the tokens file's format and permissions, and lookups. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"

static char path[64];

static void write_tokens(const char *text, mode_t mode)
{
    snprintf(path, sizeof path, "/tmp/sherl-tokens-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    cr_assert(chmod(path, mode) == 0);
}

static sherl_status load(const char *text, mode_t mode, auth_tokens **t)
{
    write_tokens(text, mode);
    sherl_status st = auth_load(t, path);
    unlink(path);
    return st;
}

Test(auth, tokens_map_to_tenants)
{
    auth_tokens *t;
    sherl_status st = load("# tenants\n"
                           "aaaaaaaaaaaaaaaaaaaa alice\n"
                           "\n"
                           "  bbbbbbbbbbbbbbbbbbbb   bob   # trailing comment\n",
                           0600, &t);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    cr_expect_eq(auth_count(t), 2);
    const char *h = "Bearer bbbbbbbbbbbbbbbbbbbb";
    cr_expect_str_eq(auth_tenant(t, h, strlen(h)), "bob");
    h = "bearer aaaaaaaaaaaaaaaaaaaa";
    cr_expect_str_eq(auth_tenant(t, h, strlen(h)), "alice");
    const char *bad[] = {"Bearer aaaaaaaaaaaaaaaaaaab", "Bearer aaaaaaaaaaaaaaaaaaaaa",
                         "Bearer aaaaaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaaaaaa", "Bearer ", "",
                         "Basic aaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect_null(auth_tenant(t, bad[i], strlen(bad[i])), "'%s' accepted", bad[i]);
    cr_expect_null(auth_tenant(t, NULL, 0));
    auth_free(t);
}

Test(auth, bad_files_are_refused_without_echoing_tokens)
{
    struct {
        const char *text;
        mode_t mode;
        const char *expect;
    } bad[] = {
        {"aaaaaaaaaaaaaaaaaaaa alice\n", 0644, "readable by others"},
        {"short alice\n", 0600, ":1: the token is 5 bytes, expected 16..256"},
        {"aaaaaaaaaaaaaaaaaaaa\n", 0600, ":1: expected 'token tenant'"},
        {"aaaaaaaaaaaaaaaaaaaa alice extra\n", 0600, ":1: expected 'token tenant'"},
        {"aaaaaaaaaaaaaaaaaaaa al/ice\n", 0600, "tenant 'al/ice'"},
        {"aaaaaaaaaaaaaaaaaaaa alice\naaaaaaaaaaaaaaaaaaaa bob\n", 0600, ":2: this token already"},
        {"# only comments\n\n", 0600, "no tokens"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        auth_tokens *t = NULL;
        sherl_status st = load(bad[i].text, bad[i].mode, &t);
        cr_expect(st.code != SHERL_OK && !t, "case %zu accepted", i);
        cr_expect(strstr(st.msg, bad[i].expect), "case %zu: '%s' lacks '%s'", i, st.msg,
                  bad[i].expect);
        cr_expect(!strstr(st.msg, "aaaaaaaaaaaaaaaaaaaa"), "case %zu echoes a token: %s", i,
                  st.msg);
    }
}
