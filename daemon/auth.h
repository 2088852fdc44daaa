/* Bearer-token authentication: a tokens file maps tokens to tenants; a call's
 * "authorization: Bearer <token>" metadata names its tenant. */
#ifndef SHERLD_AUTH_H
#define SHERLD_AUTH_H

#include <stddef.h>

#include "status.h"

#define AUTH_TENANT_MAX 64
#define AUTH_TOKEN_MIN 16
#define AUTH_TOKEN_MAX 256

typedef struct auth_tokens auth_tokens;

/* Reads "token tenant" lines ('#' comments, blank lines skipped). Tokens: 16..256 printable
 * non-space bytes, unique; tenants: 1..63 of [A-Za-z0-9._-]. The file must not be readable by
 * others (mode & 007 == 0). Errors name the file and line, never the token. */
sherl_status auth_load(auth_tokens **out, const char *path);
void auth_free(auth_tokens *t);
int auth_count(const auth_tokens *t);
/* The tenant of an authorization header value ("Bearer <token>"), or NULL. Compares in time
 * independent of where a token differs. */
const char *auth_tenant(const auth_tokens *t, const char *header, size_t len);

#endif
