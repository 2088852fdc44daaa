#include "rpc.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Requests for new calls kept outstanding, so a burst of clients does not wait for the
 * completion-queue thread to re-arm one at a time. */
#define PENDING_ACCEPTS 8

typedef enum { TAG_NEW_CALL, TAG_CLOSE, TAG_OP, TAG_SHUTDOWN } tag_kind;

typedef struct {
    tag_kind kind;
    rpc_call *call;
} rpc_tag;

struct rpc_call {
    rpc_server *srv;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    const rpc_method *m;
    char method[256];
    rpc_tag new_tag, close_tag, op_tag;
    int close_cancelled, close_done; /* RECV_CLOSE_ON_SERVER's result */
    int op_pending, op_ok;           /* the one batch a handler waits on */
    int sent_initial_md, finished;
    int orphan;                      /* no handler thread: the CQ thread frees it on close */
    grpc_byte_buffer *recv_buf;
    uint8_t *request;
    size_t request_len;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

struct rpc_server {
    grpc_server *server;
    grpc_completion_queue *cq;
    pthread_t cq_thread;
    int cq_thread_started;
    const rpc_method *methods;
    int n_methods;
    void *ctx;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int active;        /* call objects alive: pending accepts and calls in progress */
    int stopping, shutdown_done;
    rpc_tag shutdown_tag;
};

/* ------------------------------------------------------------------------------------------
 * call objects */

static rpc_call *call_new(rpc_server *s)
{
    rpc_call *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->srv = s;
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    c->new_tag = (rpc_tag){TAG_NEW_CALL, c};
    c->close_tag = (rpc_tag){TAG_CLOSE, c};
    c->op_tag = (rpc_tag){TAG_OP, c};
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    return c;
}

static void call_free(rpc_call *c)
{
    rpc_server *s = c->srv;
    if (c->call)
        grpc_call_unref(c->call);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    if (c->recv_buf)
        grpc_byte_buffer_destroy(c->recv_buf);
    free(c->request);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
    pthread_mutex_lock(&s->mu);
    s->active--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void request_call(rpc_server *s)
{
    rpc_call *c = call_new(s);
    if (!c)
        return;
    pthread_mutex_lock(&s->mu);
    s->active++;
    pthread_mutex_unlock(&s->mu);
    if (grpc_server_request_call(s->server, &c->call, &c->details, &c->md, s->cq, s->cq,
                                 &c->new_tag) != GRPC_CALL_OK)
        call_free(c);
}

/* Starts ops and waits until the completion-queue thread reports them done; 0 on success. */
static int run_ops(rpc_call *c, const grpc_op *ops, size_t n)
{
    pthread_mutex_lock(&c->mu);
    c->op_pending = 1;
    pthread_mutex_unlock(&c->mu);
    if (grpc_call_start_batch(c->call, ops, n, &c->op_tag, NULL) != GRPC_CALL_OK) {
        pthread_mutex_lock(&c->mu);
        c->op_pending = 0;
        pthread_mutex_unlock(&c->mu);
        return -1;
    }
    pthread_mutex_lock(&c->mu);
    while (c->op_pending)
        pthread_cond_wait(&c->cv, &c->mu);
    int ok = c->op_ok;
    pthread_mutex_unlock(&c->mu);
    return ok ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------
 * handler side */

const uint8_t *rpc_request(rpc_call *c, size_t *len)
{
    *len = c->request_len;
    return c->request;
}

int rpc_recv(rpc_call *c, uint8_t **data, size_t *len)
{
    *data = NULL, *len = 0;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv_buf;
    if (run_ops(c, &op, 1))
        return -1;
    if (!c->recv_buf)
        return 0;
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, c->recv_buf)) {
        grpc_byte_buffer_destroy(c->recv_buf);
        c->recv_buf = NULL;
        return -1;
    }
    grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    grpc_byte_buffer_destroy(c->recv_buf);
    c->recv_buf = NULL;
    size_t n = GRPC_SLICE_LENGTH(all);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        grpc_slice_unref(all);
        return -1;
    }
    memcpy(buf, GRPC_SLICE_START_PTR(all), n);
    grpc_slice_unref(all);
    *data = buf, *len = n;
    return 1;
}

static grpc_byte_buffer *make_buffer(const uint8_t *data, size_t len)
{
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    return bb;
}

int rpc_send(rpc_call *c, const uint8_t *data, size_t len)
{
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->sent_initial_md)
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    grpc_byte_buffer *bb = make_buffer(data, len);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = bb;
    int r = run_ops(c, ops, n);
    grpc_byte_buffer_destroy(bb);
    c->sent_initial_md = 1;
    return r;
}

void rpc_finish(rpc_call *c, int code, const char *message, const uint8_t *data, size_t len)
{
    if (c->finished)
        return;
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->sent_initial_md)
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    grpc_byte_buffer *bb = NULL;
    if (data && code == RPC_OK) {
        bb = make_buffer(data, len);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = bb;
    }
    grpc_slice details = grpc_slice_from_copied_string(message ? message : "");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)code;
    ops[n++].data.send_status_from_server.status_details = &details;
    (void)run_ops(c, ops, n); /* a client that went away needs no status */
    grpc_slice_unref(details);
    if (bb)
        grpc_byte_buffer_destroy(bb);
    c->sent_initial_md = 1;
    c->finished = 1;
}

const char *rpc_metadata(rpc_call *c, const char *key, size_t *len)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i < c->md.count; i++) {
        const grpc_metadata *m = &c->md.metadata[i];
        if (GRPC_SLICE_LENGTH(m->key) == kl && !memcmp(GRPC_SLICE_START_PTR(m->key), key, kl)) {
            *len = GRPC_SLICE_LENGTH(m->value);
            return (const char *)GRPC_SLICE_START_PTR(m->value);
        }
    }
    *len = 0;
    return NULL;
}

int rpc_cancelled(rpc_call *c)
{
    pthread_mutex_lock(&c->mu);
    int r = c->close_done && c->close_cancelled;
    pthread_mutex_unlock(&c->mu);
    return r;
}

const char *rpc_method_name(rpc_call *c) { return c->method; }

static void *call_thread(void *arg)
{
    rpc_call *c = arg;
    rpc_server *s = c->srv;
    if (!c->m) {
        char msg[320];
        snprintf(msg, sizeof msg, "unknown method %s", c->method);
        rpc_finish(c, RPC_UNIMPLEMENTED, msg, NULL, 0);
    } else if (c->m->kind == RPC_CLIENT_STREAM) {
        c->m->fn(c, s->ctx);
    } else {
        int r = rpc_recv(c, &c->request, &c->request_len);
        if (r == 1)
            c->m->fn(c, s->ctx);
        else
            rpc_finish(c, r == 0 ? RPC_INVALID_ARGUMENT : RPC_CANCELLED,
                       r == 0 ? "the call carried no request message" : "cancelled", NULL, 0);
    }
    if (!c->finished)
        rpc_finish(c, RPC_INTERNAL, "the handler ended without a status", NULL, 0);
    pthread_mutex_lock(&c->mu);
    while (!c->close_done)
        pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
    call_free(c);
    return NULL;
}

/* ------------------------------------------------------------------------------------------
 * completion-queue thread */

static void start_call(rpc_server *s, rpc_call *c)
{
    size_t ml = GRPC_SLICE_LENGTH(c->details.method);
    if (ml >= sizeof c->method)
        ml = sizeof c->method - 1;
    memcpy(c->method, GRPC_SLICE_START_PTR(c->details.method), ml);
    c->method[ml] = 0;
    for (int i = 0; i < s->n_methods; i++)
        if (!strcmp(s->methods[i].method, c->method))
            c->m = &s->methods[i];
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->close_cancelled;
    if (grpc_call_start_batch(c->call, &op, 1, &c->close_tag, NULL) != GRPC_CALL_OK) {
        call_free(c);
        return;
    }
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &at, call_thread, c)) {
        /* no thread for it: refuse the call; the close tag frees it */
        c->orphan = 1;
        grpc_call_cancel_with_status(c->call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                                     "the server cannot start a thread for this call", NULL);
    }
    pthread_attr_destroy(&at);
}

static void *cq_thread(void *arg)
{
    rpc_server *s = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        rpc_tag *t = ev.tag;
        rpc_call *c = t->call;
        switch (t->kind) {
        case TAG_NEW_CALL:
            if (!ev.success) { /* the server is shutting down */
                call_free(c);
                break;
            }
            pthread_mutex_lock(&s->mu);
            int stopping = s->stopping;
            pthread_mutex_unlock(&s->mu);
            if (!stopping)
                request_call(s);
            start_call(s, c);
            break;
        case TAG_CLOSE:
            pthread_mutex_lock(&c->mu);
            c->close_done = 1;
            int orphan = c->orphan;
            pthread_cond_broadcast(&c->cv);
            pthread_mutex_unlock(&c->mu);
            if (orphan)
                call_free(c);
            break;
        case TAG_OP:
            pthread_mutex_lock(&c->mu);
            c->op_pending = 0;
            c->op_ok = ev.success;
            pthread_cond_broadcast(&c->cv);
            pthread_mutex_unlock(&c->mu);
            break;
        case TAG_SHUTDOWN:
            pthread_mutex_lock(&s->mu);
            s->shutdown_done = 1;
            pthread_cond_broadcast(&s->cv);
            pthread_mutex_unlock(&s->mu);
            break;
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------
 * server */

sherl_status rpc_server_start(rpc_server **out, const rpc_options *opt, const rpc_method *methods,
                              int n_methods, void *ctx, int *port)
{
    *out = NULL;
    rpc_server *s = calloc(1, sizeof *s);
    if (!s)
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    s->methods = methods, s->n_methods = n_methods, s->ctx = ctx;
    s->shutdown_tag = (rpc_tag){TAG_SHUTDOWN, NULL};
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    grpc_init();
    int max = (int)(opt->max_message_bytes > 0 ? opt->max_message_bytes : 4 << 20);
    grpc_arg args[3];
    args[0].type = GRPC_ARG_INTEGER, args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = max;
    args[1].type = GRPC_ARG_INTEGER, args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = max;
    /* gRPC sets SO_REUSEPORT by default: a second daemon would bind the same port silently */
    args[2].type = GRPC_ARG_INTEGER, args[2].key = GRPC_ARG_ALLOW_REUSEPORT;
    args[2].value.integer = 0;
    grpc_channel_args ch = {3, args};
    s->cq = grpc_completion_queue_create_for_next(NULL);
    s->server = grpc_server_create(&ch, NULL);
    grpc_server_register_completion_queue(s->server, s->cq, NULL);
    grpc_server_credentials *creds;
    if (opt->tls_cert_pem && opt->tls_key_pem) {
        grpc_ssl_pem_key_cert_pair pair = {opt->tls_key_pem, opt->tls_cert_pem};
        creds = grpc_ssl_server_credentials_create(NULL, &pair, 1, 0, NULL);
    } else {
        creds = grpc_insecure_server_credentials_create();
    }
    int bound = creds ? grpc_server_add_http2_port(s->server, opt->listen, creds) : 0;
    if (creds)
        grpc_server_credentials_release(creds);
    if (bound == 0) {
        grpc_server_destroy(s->server);
        grpc_completion_queue_shutdown(s->cq);
        while (grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
               GRPC_QUEUE_SHUTDOWN) {
        }
        grpc_completion_queue_destroy(s->cq);
        grpc_shutdown();
        free(s);
        return sherl_errorf(SHERL_EIO, "listen: cannot serve on '%s' (address in use, invalid, or "
                                       "bad TLS files)",
                            opt->listen);
    }
    grpc_server_start(s->server);
    if (pthread_create(&s->cq_thread, NULL, cq_thread, s)) {
        s->cq_thread_started = 0;
        rpc_server_stop(s);
        return sherl_errorf(SHERL_ENOMEM, "cannot start the completion-queue thread");
    }
    s->cq_thread_started = 1;
    for (int i = 0; i < PENDING_ACCEPTS; i++)
        request_call(s);
    *port = strncmp(opt->listen, "unix:", 5) ? bound : 0;
    *out = s;
    return sherl_ok();
}

void rpc_server_stop(rpc_server *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_mutex_unlock(&s->mu);
    grpc_server_shutdown_and_notify(s->server, s->cq, &s->shutdown_tag);
    /* without this, open streams keep the shutdown pending forever */
    grpc_server_cancel_all_calls(s->server);
    if (s->cq_thread_started) {
        pthread_mutex_lock(&s->mu);
        while (!s->shutdown_done || s->active > 0)
            pthread_cond_wait(&s->cv, &s->mu);
        pthread_mutex_unlock(&s->mu);
    }
    grpc_server_destroy(s->server);
    grpc_completion_queue_shutdown(s->cq);
    if (s->cq_thread_started)
        pthread_join(s->cq_thread, NULL);
    grpc_completion_queue_destroy(s->cq);
    grpc_shutdown();
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
