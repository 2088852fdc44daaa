#include "auth.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "config.h"
#include "json_util.h"

typedef struct {
    char token[AUTH_TOKEN_MAX + 1];
    size_t len;
    char tenant[AUTH_TENANT_MAX];
} entry;

struct auth_tokens {
    entry *e;
    int n;
};

void auth_free(auth_tokens *t)
{
    if (!t)
        return;
    if (t->e)
        memset(t->e, 0, sizeof *t->e * (size_t)t->n); /* do not leave tokens in freed memory */
    free(t->e);
    free(t);
}

int auth_count(const auth_tokens *t) { return t ? t->n : 0; }

/* 1 when a[0..n) equals b[0..n), in time that depends only on n. */
static int same_bytes(const char *a, const char *b, size_t n)
{
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++)
        d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

static int valid_tenant(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= AUTH_TENANT_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
            return 0;
    return 1;
}

sherl_status auth_load(auth_tokens **out, const char *path)
{
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb))
        return sherl_errorf(SHERL_EIO, "tokens-file %s: cannot stat it", path);
    if (sb.st_mode & 007)
        return sherl_errorf(SHERL_EINVAL, "tokens-file %s: readable by others (mode %03o); "
                                          "chmod o-rwx it",
                            path, (unsigned)(sb.st_mode & 0777));
    char *data;
    size_t len;
    SHERL_TRY(sherl_read_file(path, 16 << 20, &data, &len));
    auth_tokens *t = calloc(1, sizeof *t);
    int cap = 0;
    sherl_status st = t ? sherl_ok() : sherl_errorf(SHERL_ENOMEM, "out of memory");
    int lineno = 0;
    char *cursor = data, *line;
    while (!st.code && (line = config_next_line(&cursor, &lineno))) {
        char *tok = strtok(line, " \t\r"), *ten = tok ? strtok(NULL, " \t\r") : NULL;
        char *extra = ten ? strtok(NULL, " \t\r") : NULL;
        if (!tok)
            continue;
        if (!ten || extra) {
            st = sherl_errorf(SHERL_EINVAL, "%s:%d: expected 'token tenant'", path, lineno);
            break;
        }
        size_t tl = strlen(tok);
        if (tl < AUTH_TOKEN_MIN || tl > AUTH_TOKEN_MAX) {
            st = sherl_errorf(SHERL_EINVAL, "%s:%d: the token is %zu bytes, expected %d..%d", path,
                              lineno, tl, AUTH_TOKEN_MIN, AUTH_TOKEN_MAX);
            break;
        }
        for (size_t i = 0; i < tl && !st.code; i++)
            if (!isgraph((unsigned char)tok[i]))
                st = sherl_errorf(SHERL_EINVAL, "%s:%d: the token has a non-printable byte", path,
                                  lineno);
        if (!st.code && !valid_tenant(ten))
            st = sherl_errorf(SHERL_EINVAL, "%s:%d: tenant '%.64s': expected 1..63 of "
                                            "[A-Za-z0-9._-]",
                              path, lineno, ten);
        for (int i = 0; !st.code && i < t->n; i++)
            if (t->e[i].len == tl && same_bytes(t->e[i].token, tok, tl))
                st = sherl_errorf(SHERL_EINVAL, "%s:%d: this token already appears above", path,
                                  lineno);
        if (st.code)
            break;
        if (t->n == cap) {
            int nc = cap ? 2 * cap : 8;
            entry *e = realloc(t->e, sizeof *e * (size_t)nc);
            if (!e) {
                st = sherl_errorf(SHERL_ENOMEM, "out of memory");
                break;
            }
            t->e = e, cap = nc;
        }
        entry *e = &t->e[t->n++];
        memcpy(e->token, tok, tl + 1);
        e->len = tl;
        snprintf(e->tenant, sizeof e->tenant, "%s", ten);
    }
    memset(data, 0, len);
    free(data);
    if (!st.code && t->n == 0)
        st = sherl_errorf(SHERL_EINVAL, "%s: no tokens (an empty tokens file would lock every "
                                        "client out)",
                          path);
    if (st.code) {
        auth_free(t);
        return st;
    }
    *out = t;
    return sherl_ok();
}

const char *auth_tenant(const auth_tokens *t, const char *header, size_t len)
{
    static const char prefix[] = "Bearer ";
    const size_t pl = sizeof prefix - 1;
    if (!t || !header || len <= pl || strncasecmp(header, prefix, pl))
        return NULL;
    const char *tok = header + pl;
    size_t tl = len - pl;
    const char *found = NULL;
    for (int i = 0; i < t->n; i++) /* no early exit: the time does not say which token matched */
        if (t->e[i].len == tl && same_bytes(t->e[i].token, tok, tl) && !found)
            found = t->e[i].tenant;
    return found;
}
