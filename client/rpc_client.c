#include "rpc_client.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rpc_client {
    grpc_channel *ch;
    char *auth; /* "Bearer <token>" or NULL */
};

struct rpc_stream {
    rpc_client *cl;
    grpc_call *call;
    grpc_completion_queue *cq;
    int client_stream, half_closed, ended;
    grpc_metadata_array initial_md;
    int got_initial_md;
};

static const char *const CODE_NAMES[] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED"};

const char *rpc_code_name(int code)
{
    return code >= 0 && code <= 16 ? CODE_NAMES[code] : "UNKNOWN_CODE";
}

sherl_status rpc_client_open(rpc_client **out, const char *addr, const char *token,
                             const char *ca_pem)
{
    *out = NULL;
    rpc_client *c = calloc(1, sizeof *c);
    if (!c)
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    if (token && *token) {
        size_t n = strlen(token) + 8;
        c->auth = malloc(n);
        if (!c->auth) {
            free(c);
            return sherl_errorf(SHERL_ENOMEM, "out of memory");
        }
        snprintf(c->auth, n, "Bearer %s", token);
    }
    grpc_init();
    grpc_channel_credentials *creds = ca_pem ? grpc_ssl_credentials_create(ca_pem, NULL, NULL, NULL)
                                             : grpc_insecure_credentials_create();
    grpc_arg arg;
    arg.type = GRPC_ARG_INTEGER, arg.key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    arg.value.integer = 64 << 20;
    grpc_channel_args args = {1, &arg};
    c->ch = grpc_channel_create(addr, creds, &args);
    grpc_channel_credentials_release(creds);
    if (!c->ch) {
        free(c->auth);
        free(c);
        grpc_shutdown();
        return sherl_errorf(SHERL_EINVAL, "cannot create a channel to '%s'", addr);
    }
    *out = c;
    return sherl_ok();
}

void rpc_client_close(rpc_client *c)
{
    if (!c)
        return;
    grpc_channel_destroy(c->ch);
    free(c->auth);
    free(c);
    grpc_shutdown();
}

static gpr_timespec deadline_after(double s)
{
    if (s <= 0)
        return gpr_inf_future(GPR_CLOCK_REALTIME);
    return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                        gpr_time_from_millis((int64_t)(s * 1000), GPR_TIMESPAN));
}

/* Runs one batch and waits for it; 0 on success. */
static int run(rpc_stream *s, const grpc_op *ops, size_t n)
{
    static char tag_storage;
    void *tag = &tag_storage;
    if (grpc_call_start_batch(s->call, ops, n, tag, NULL) != GRPC_CALL_OK)
        return -1;
    grpc_event ev = grpc_completion_queue_pluck(s->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success ? 0 : -1;
}

static grpc_byte_buffer *make_buffer(const uint8_t *data, size_t len)
{
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    return bb;
}

static int take_buffer(grpc_byte_buffer *bb, uint8_t **out, size_t *len)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return -1;
    grpc_slice all = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    size_t n = GRPC_SLICE_LENGTH(all);
    uint8_t *m = malloc(n ? n : 1);
    if (m)
        memcpy(m, GRPC_SLICE_START_PTR(all), n);
    grpc_slice_unref(all);
    if (!m)
        return -1;
    *out = m, *len = n;
    return 0;
}

rpc_stream *rpc_stream_open(rpc_client *c, const char *method, const uint8_t *req, size_t len,
                            double timeout_s)
{
    rpc_stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->cl = c;
    s->client_stream = req == NULL;
    grpc_metadata_array_init(&s->initial_md);
    s->cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_slice m = grpc_slice_from_copied_string(method);
    s->call = grpc_channel_create_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq, m, NULL,
                                       deadline_after(timeout_s), NULL);
    grpc_slice_unref(m);
    grpc_metadata md;
    memset(&md, 0, sizeof md);
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (c->auth) {
        md.key = grpc_slice_from_static_string("authorization");
        md.value = grpc_slice_from_copied_string(c->auth);
        ops[n].data.send_initial_metadata.count = 1;
        ops[n].data.send_initial_metadata.metadata = &md;
    }
    n++;
    grpc_byte_buffer *bb = NULL;
    if (req) {
        bb = make_buffer(req, len);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = bb;
        ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        s->half_closed = 1;
    }
    /* a failed send shows up as the call's status in rpc_stream_finish */
    if (run(s, ops, n))
        s->ended = 1;
    if (bb)
        grpc_byte_buffer_destroy(bb);
    if (c->auth)
        grpc_slice_unref(md.value);
    return s;
}

int rpc_stream_read(rpc_stream *s, uint8_t **msg, size_t *len)
{
    *msg = NULL, *len = 0;
    if (s->ended)
        return 0;
    grpc_byte_buffer *bb = NULL;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!s->got_initial_md) {
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
        s->got_initial_md = 1;
    }
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n++].data.recv_message.recv_message = &bb;
    if (run(s, ops, n)) {
        s->ended = 1;
        return -1;
    }
    if (!bb) {
        s->ended = 1;
        return 0;
    }
    int r = take_buffer(bb, msg, len);
    grpc_byte_buffer_destroy(bb);
    return r ? -1 : 1;
}

int rpc_stream_write(rpc_stream *s, const uint8_t *msg, size_t len)
{
    if (s->ended || s->half_closed)
        return -1;
    grpc_byte_buffer *bb = make_buffer(msg, len);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = bb;
    int r = run(s, &op, 1);
    grpc_byte_buffer_destroy(bb);
    if (r)
        s->ended = 1;
    return r;
}

static void stream_free(rpc_stream *s)
{
    grpc_call_unref(s->call);
    grpc_completion_queue_shutdown(s->cq);
    while (grpc_completion_queue_pluck(s->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(s->cq);
    grpc_metadata_array_destroy(&s->initial_md);
    free(s);
}

int rpc_stream_finish(rpc_stream *s, uint8_t **resp, size_t *resp_len, rpc_status *st)
{
    if (resp)
        *resp = NULL, *resp_len = 0;
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!s->half_closed && !s->ended) {
        ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        s->half_closed = 1;
    }
    grpc_byte_buffer *bb = NULL;
    if (!s->got_initial_md) {
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
        s->got_initial_md = 1;
    }
    if (s->client_stream && resp) {
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n++].data.recv_message.recv_message = &bb;
    }
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_metadata_array trailing;
    grpc_metadata_array_init(&trailing);
    ops[n].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[n].data.recv_status_on_client.status = &code;
    ops[n].data.recv_status_on_client.status_details = &details;
    ops[n++].data.recv_status_on_client.trailing_metadata = &trailing;
    if (run(s, ops, n)) {
        /* a batch with a failed send op: ask again for the status alone */
        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        ops[0].data.recv_status_on_client.status = &code;
        ops[0].data.recv_status_on_client.status_details = &details;
        ops[0].data.recv_status_on_client.trailing_metadata = &trailing;
        if (run(s, ops, 1))
            code = GRPC_STATUS_UNAVAILABLE;
    }
    st->code = (int)code;
    size_t dl = GRPC_SLICE_LENGTH(details);
    if (dl >= sizeof st->message)
        dl = sizeof st->message - 1;
    memcpy(st->message, GRPC_SLICE_START_PTR(details), dl);
    st->message[dl] = 0;
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&trailing);
    if (bb) {
        if (code == GRPC_STATUS_OK && resp && take_buffer(bb, resp, resp_len))
            st->code = GRPC_STATUS_INTERNAL, snprintf(st->message, sizeof st->message, "out of memory");
        grpc_byte_buffer_destroy(bb);
    }
    stream_free(s);
    return st->code;
}

void rpc_stream_cancel(rpc_stream *s)
{
    grpc_call_cancel(s->call, NULL);
    rpc_status st;
    rpc_stream_finish(s, NULL, NULL, &st);
}

int rpc_unary(rpc_client *c, const char *method, const uint8_t *req, size_t len, uint8_t **resp,
              size_t *resp_len, double timeout_s, rpc_status *st)
{
    *resp = NULL, *resp_len = 0;
    rpc_stream *s = rpc_stream_open(c, method, req ? req : (const uint8_t *)"", req ? len : 0,
                                    timeout_s);
    if (!s) {
        st->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(st->message, sizeof st->message, "out of memory");
        return st->code;
    }
    uint8_t *m = NULL;
    size_t ml = 0;
    int r = rpc_stream_read(s, &m, &ml);
    int code = rpc_stream_finish(s, NULL, NULL, st);
    if (code == GRPC_STATUS_OK && r == 1) {
        *resp = m, *resp_len = ml;
    } else {
        free(m);
        if (code == GRPC_STATUS_OK) {
            st->code = GRPC_STATUS_INTERNAL;
            snprintf(st->message, sizeof st->message, "the server sent no response message");
        }
    }
    return st->code;
}
