/* The RPC layer (daemon/rpc.c) with the blocking client (client/rpc_client.c) on loopback: unary
 * calls, server and client streams, status codes and messages, metadata, unknown methods,
 * concurrent clients, a second server on a taken port, and stopping with streams open. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc.h"
#include "rpc_client.h"

static void h_unary(rpc_call *c, void *ctx)
{
    (void)ctx;
    size_t n;
    const uint8_t *req = rpc_request(c, &n);
    if (n == 4 && !memcmp(req, "fail", 4)) {
        rpc_finish(c, RPC_INVALID_ARGUMENT, "field x: 'fail' is not allowed", NULL, 0);
        return;
    }
    uint8_t *out = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        out[i] = req[n - 1 - i];
    rpc_finish(c, RPC_OK, NULL, out, n);
    free(out);
}

/* request "N": N messages "0".."N-1"; "0": nothing until the call is cancelled */
static void h_count(rpc_call *c, void *ctx)
{
    (void)ctx;
    size_t n;
    const uint8_t *req = rpc_request(c, &n);
    char buf[32];
    snprintf(buf, sizeof buf, "%.*s", (int)(n < 31 ? n : 31), (const char *)req);
    int count = atoi(buf);
    if (count == 0) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        while (!rpc_cancelled(c))
            nanosleep(&ts, NULL); /* a handler that only ends when its call does */
        rpc_finish(c, RPC_CANCELLED, "cancelled", NULL, 0);
        return;
    }
    for (int i = 0; i < count; i++) {
        int l = snprintf(buf, sizeof buf, "%d", i);
        if (rpc_send(c, (const uint8_t *)buf, (size_t)l))
            return;
    }
    rpc_finish(c, RPC_OK, NULL, NULL, 0);
}

static void h_sum(rpc_call *c, void *ctx)
{
    (void)ctx;
    uint8_t *m;
    size_t len, total = 0;
    int r, msgs = 0;
    while ((r = rpc_recv(c, &m, &len)) == 1) {
        total += len, msgs++;
        free(m);
    }
    char out[64];
    int l = snprintf(out, sizeof out, "%d:%zu", msgs, total);
    rpc_finish(c, r == 0 ? RPC_OK : RPC_CANCELLED, NULL, (const uint8_t *)out, (size_t)l);
}

static void h_auth(rpc_call *c, void *ctx)
{
    (void)ctx;
    size_t len;
    const char *v = rpc_metadata(c, "authorization", &len);
    if (!v)
        rpc_finish(c, RPC_UNAUTHENTICATED, "no token", NULL, 0);
    else
        rpc_finish(c, RPC_OK, NULL, (const uint8_t *)v, len);
}

static const rpc_method METHODS[] = {
    {"/test.Echo/Unary", RPC_UNARY, h_unary},
    {"/test.Echo/Count", RPC_SERVER_STREAM, h_count},
    {"/test.Echo/Sum", RPC_CLIENT_STREAM, h_sum},
    {"/test.Echo/Auth", RPC_UNARY, h_auth},
};

static rpc_server *start(int *port)
{
    rpc_options o = {"127.0.0.1:0", 1 << 20, NULL, NULL};
    rpc_server *s;
    sherl_status st = rpc_server_start(&s, &o, METHODS, 4, NULL, port);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    cr_assert(*port > 0);
    return s;
}

static rpc_client *connect_to(int port, const char *token)
{
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    rpc_client *c;
    cr_assert(rpc_client_open(&c, addr, token, NULL).code == SHERL_OK);
    return c;
}

Test(rpc, unary_calls_statuses_and_metadata, .timeout = 60)
{
    int port;
    rpc_server *s = start(&port);
    rpc_client *c = connect_to(port, "secret-token-123");
    uint8_t *resp;
    size_t n;
    rpc_status st;
    cr_expect_eq(rpc_unary(c, "/test.Echo/Unary", (const uint8_t *)"abc", 3, &resp, &n, 10, &st),
                 0, "%s", st.message);
    cr_expect(n == 3 && !memcmp(resp, "cba", 3));
    free(resp);
    cr_expect_eq(rpc_unary(c, "/test.Echo/Unary", (const uint8_t *)"", 0, &resp, &n, 10, &st), 0,
                 "an empty message is a message");
    free(resp);
    cr_expect_eq(rpc_unary(c, "/test.Echo/Unary", (const uint8_t *)"fail", 4, &resp, &n, 10, &st),
                 RPC_INVALID_ARGUMENT);
    cr_expect_str_eq(st.message, "field x: 'fail' is not allowed");
    cr_expect_null(resp);
    cr_expect_eq(rpc_unary(c, "/test.Echo/Nope", (const uint8_t *)"x", 1, &resp, &n, 10, &st),
                 RPC_UNIMPLEMENTED);
    cr_expect(strstr(st.message, "/test.Echo/Nope"), "%s", st.message);
    cr_expect_eq(rpc_unary(c, "/test.Echo/Auth", (const uint8_t *)"", 0, &resp, &n, 10, &st), 0);
    cr_expect(n == strlen("Bearer secret-token-123") && !memcmp(resp, "Bearer secret-token-123", n));
    free(resp);
    /* larger than max-message-bytes (1 MiB here) */
    size_t big = (1 << 20) + 100;
    uint8_t *b = calloc(big, 1);
    cr_expect_eq(rpc_unary(c, "/test.Echo/Unary", b, big, &resp, &n, 10, &st),
                 RPC_RESOURCE_EXHAUSTED, "%s %s", rpc_code_name(st.code), st.message);
    free(b);
    rpc_client_close(c);
    rpc_server_stop(s);
}

Test(rpc, streams_both_ways, .timeout = 60)
{
    int port;
    rpc_server *s = start(&port);
    rpc_client *c = connect_to(port, NULL);
    rpc_stream *st = rpc_stream_open(c, "/test.Echo/Count", (const uint8_t *)"5", 1, 10);
    cr_assert(st);
    uint8_t *m;
    size_t n;
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(rpc_stream_read(st, &m, &n), 1, "message %d", i);
        char want[8];
        snprintf(want, sizeof want, "%d", i);
        cr_expect(n == strlen(want) && !memcmp(m, want, n));
        free(m);
    }
    cr_expect_eq(rpc_stream_read(st, &m, &n), 0, "end of stream");
    rpc_status status;
    cr_expect_eq(rpc_stream_finish(st, NULL, NULL, &status), 0, "%s", status.message);

    st = rpc_stream_open(c, "/test.Echo/Sum", NULL, 0, 10);
    for (int i = 1; i <= 4; i++)
        cr_assert_eq(rpc_stream_write(st, (const uint8_t *)"xxxxxxxx", (size_t)i), 0);
    uint8_t *resp;
    cr_expect_eq(rpc_stream_finish(st, &resp, &n, &status), 0, "%s", status.message);
    cr_expect(n == 4 && !memcmp(resp, "4:10", 4), "%.*s", (int)n, resp);
    free(resp);
    rpc_client_close(c);
    rpc_server_stop(s);
}

static int g_port;
static void *client_thread(void *arg)
{
    long id = (long)arg;
    rpc_client *c = connect_to(g_port, NULL);
    int bad = 0;
    for (int i = 0; i < 20; i++) {
        char req[32];
        int l = snprintf(req, sizeof req, "%ld-%d", id, i);
        uint8_t *resp;
        size_t n;
        rpc_status st;
        if (rpc_unary(c, "/test.Echo/Unary", (const uint8_t *)req, (size_t)l, &resp, &n, 20, &st) ||
            n != (size_t)l || resp[0] != req[l - 1])
            bad++;
        free(resp);
    }
    rpc_client_close(c);
    return (void *)(long)bad;
}

Test(rpc, concurrent_clients, .timeout = 120)
{
    rpc_server *s = start(&g_port);
    pthread_t th[16];
    for (long i = 0; i < 16; i++)
        pthread_create(&th[i], NULL, client_thread, (void *)i);
    long bad = 0;
    for (int i = 0; i < 16; i++) {
        void *r;
        pthread_join(th[i], &r);
        bad += (long)r;
    }
    cr_expect_eq(bad, 0, "%ld of 320 calls went wrong", bad);
    rpc_server_stop(s);
}

Test(rpc, a_second_server_on_the_same_port_fails, .timeout = 60)
{
    int port;
    rpc_server *s = start(&port);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    rpc_options o = {addr, 1 << 20, NULL, NULL};
    rpc_server *s2 = NULL;
    int p2;
    sherl_status st = rpc_server_start(&s2, &o, METHODS, 4, NULL, &p2);
    cr_expect(st.code != SHERL_OK && !s2, "a second server bound port %d", port);
    cr_expect(strstr(st.msg, addr), "%s", st.msg);
    rpc_server_stop(s2);
    rpc_server_stop(s);
}

static void *stopper(void *arg)
{
    rpc_server_stop(arg);
    return NULL;
}

Test(rpc, stop_cancels_open_streams, .timeout = 60)
{
    int port;
    rpc_server *s = start(&port);
    rpc_client *c = connect_to(port, NULL);
    rpc_stream *st = rpc_stream_open(c, "/test.Echo/Count", (const uint8_t *)"0", 1, 30);
    /* the stream is open on the server once its first (and only) read fails or blocks: stop
     * the server from another thread and the read must return */
    pthread_t th;
    pthread_create(&th, NULL, stopper, s);
    uint8_t *m;
    size_t n;
    int r = rpc_stream_read(st, &m, &n);
    cr_expect(r <= 0, "a message from a stopped server");
    rpc_status status;
    int code = rpc_stream_finish(st, NULL, NULL, &status);
    cr_expect(code != 0, "the stream ended OK on a stopped server");
    pthread_join(th, NULL);
    rpc_client_close(c);
}
