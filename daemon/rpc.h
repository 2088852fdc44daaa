/* The only module that touches gRPC: a server on the gRPC C core whose handlers are plain
 * blocking functions on a thread of their own. One thread drives the completion queue and
 * wakes handlers when their operations complete; handlers read requests, write responses and
 * finish with a status through the calls below. That keeps the async state machine of gRPC in
 * one place and makes a handler (see service.c) read like a function. */
#ifndef SHERLD_RPC_H
#define SHERLD_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* gRPC status codes we answer with (the numbers are gRPC's). */
enum {
    RPC_OK = 0,
    RPC_CANCELLED = 1,
    RPC_UNKNOWN = 2,
    RPC_INVALID_ARGUMENT = 3,
    RPC_DEADLINE_EXCEEDED = 4,
    RPC_NOT_FOUND = 5,
    RPC_ALREADY_EXISTS = 6,
    RPC_PERMISSION_DENIED = 7,
    RPC_RESOURCE_EXHAUSTED = 8,
    RPC_FAILED_PRECONDITION = 9,
    RPC_ABORTED = 10,
    RPC_UNIMPLEMENTED = 12,
    RPC_INTERNAL = 13,
    RPC_UNAVAILABLE = 14,
    RPC_UNAUTHENTICATED = 16
};

typedef struct rpc_server rpc_server;
typedef struct rpc_call rpc_call;

typedef enum {
    RPC_UNARY = 0,       /* one request (rpc_request), one response via rpc_finish */
    RPC_SERVER_STREAM,   /* one request, responses via rpc_send, then rpc_finish */
    RPC_CLIENT_STREAM    /* requests via rpc_recv, one response via rpc_finish */
} rpc_kind;

typedef void (*rpc_handler)(rpc_call *call, void *ctx);

typedef struct {
    const char *method; /* "/sherl.v1.Sherl/SubmitJob" */
    rpc_kind kind;
    rpc_handler fn;
} rpc_method;

typedef struct {
    const char *listen;          /* host:port or unix:/path */
    int64_t max_message_bytes;
    const char *tls_cert_pem, *tls_key_pem; /* contents, both or neither */
} rpc_options;

/* Binds and starts serving; *port receives the bound TCP port (0 for unix sockets). The
 * address must be free: a second server on a port fails (no SO_REUSEPORT). */
sherl_status rpc_server_start(rpc_server **out, const rpc_options *opt, const rpc_method *methods,
                              int n_methods, void *ctx, int *port);
/* Stops accepting, cancels every call still open, waits for their handlers to return, and
 * frees the server. */
void rpc_server_stop(rpc_server *s);

/* ---- inside a handler ---- */

/* The request of a unary or server-streaming call (owned by the call). */
const uint8_t *rpc_request(rpc_call *c, size_t *len);
/* The next message of a client stream: 1 and *data (malloc'd, caller frees) when there is one,
 * 0 at the end of the stream, -1 when the call failed or was cancelled. */
int rpc_recv(rpc_call *c, uint8_t **data, size_t *len);
/* Sends one message of a server stream; 0, or -1 when the call is gone (cancelled, deadline,
 * client away). */
int rpc_send(rpc_call *c, const uint8_t *data, size_t len);
/* Ends the call: for unary and client-streaming calls with the response (data may be NULL
 * with a non-OK code); then the status. Exactly once per call (the framework answers INTERNAL
 * for a handler that returns without it). */
void rpc_finish(rpc_call *c, int code, const char *message, const uint8_t *data, size_t len);
/* The first value of request metadata `key` (lowercase), or NULL. */
const char *rpc_metadata(rpc_call *c, const char *key, size_t *len);
/* Non-zero once the client cancelled, the deadline passed or the server is stopping. */
int rpc_cancelled(rpc_call *c);
const char *rpc_method_name(rpc_call *c);

#endif
