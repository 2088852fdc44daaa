/* A small blocking gRPC client on the gRPC C core, for sherlctl and the tests: unary calls,
 * server streams and client streams, each on a completion queue of its own. Messages are
 * opaque bytes (the caller packs and unpacks them with protobuf-c). */
#ifndef SHERL_RPC_CLIENT_H
#define SHERL_RPC_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct rpc_client rpc_client;
typedef struct rpc_stream rpc_stream;

typedef struct {
    int code;          /* gRPC status code; 0 = OK */
    char message[512];
} rpc_status;

/* addr: host:port or unix:/path. token (may be NULL) is sent as "authorization: Bearer ...";
 * ca_pem (may be NULL: plaintext) the PEM contents of the server's CA. */
sherl_status rpc_client_open(rpc_client **out, const char *addr, const char *token,
                             const char *ca_pem);
void rpc_client_close(rpc_client *c);

/* One request, one response (*resp malloc'd, NULL when the status is not OK). Returns the
 * status code. timeout_s <= 0: no deadline. */
int rpc_unary(rpc_client *c, const char *method, const uint8_t *req, size_t len, uint8_t **resp,
              size_t *resp_len, double timeout_s, rpc_status *st);

/* A server stream (req is its one request) or a client stream (req NULL). */
rpc_stream *rpc_stream_open(rpc_client *c, const char *method, const uint8_t *req, size_t len,
                            double timeout_s);
/* 1 and a malloc'd message, 0 at the end of the stream, -1 on error. */
int rpc_stream_read(rpc_stream *s, uint8_t **msg, size_t *len);
/* Client streams: 0, or -1 when the call is gone. */
int rpc_stream_write(rpc_stream *s, const uint8_t *msg, size_t len);
/* Half-closes (client streams), reads the response of a client stream (resp may be NULL)
 * and the status, and frees the stream. Returns the status code. */
int rpc_stream_finish(rpc_stream *s, uint8_t **resp, size_t *resp_len, rpc_status *st);
/* Cancels and frees a stream without waiting for more. */
void rpc_stream_cancel(rpc_stream *s);

const char *rpc_code_name(int code);

#endif
