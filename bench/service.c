/* bench_service: the service's latencies on loopback against a running sherld. Prints numbers;
 * never fails on a timing.
 *
 *   bench_service ADDR SPEC_JSON_FILE [--clients 64] [--calls 20] [--watchers 100]
 *
 * 1. WatchJob fan-out: one job is submitted; once it runs, --watchers streams follow it to the
 *    end; per event, the delay from the event's commit (time_ms) to its arrival at each stream.
 * 2. GetJob: --clients threads, --calls calls each, on that job.
 * 3. SubmitJob: --clients threads, 2 submits each (the spec is planned each time: tokenizer and
 *    data are read), then every job left is cancelled. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "json_util.h"
#include "rpc_client.h"
#include "sherl/v1/sherl.pb-c.h"

static const char *g_addr, *g_spec;
static int g_calls = 20;
static char g_job[64];
static double g_start_ms; /* when the watchers start: events after it are live */

typedef struct {
    double *lat;
    int n, cap;
    int errors;
    pthread_mutex_t mu;
} samples;

static void add(samples *s, double v)
{
    pthread_mutex_lock(&s->mu);
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 1024;
        s->lat = realloc(s->lat, sizeof(double) * (size_t)s->cap);
    }
    s->lat[s->n++] = v;
    pthread_mutex_unlock(&s->mu);
}

static void report(const char *what, samples *s, double wall)
{
    if (!s->n) {
        printf("%-34s no samples (%d errors)\n", what, s->errors);
        return;
    }
    qsort(s->lat, (size_t)s->n, sizeof(double), bench_cmp_d);
    double p50 = s->lat[s->n / 2], p99 = s->lat[(size_t)((s->n - 1) * 0.99)];
    printf("%-34s n=%d  p50 %.2f ms  p99 %.2f ms  max %.2f ms", what, s->n, 1e3 * p50, 1e3 * p99,
           1e3 * s->lat[s->n - 1]);
    if (wall > 0)
        printf("  (%.0f calls/s)", s->n / wall);
    printf("  errors %d\n", s->errors);
}

static rpc_client *connect_or_die(void)
{
    rpc_client *c;
    sherl_status st = rpc_client_open(&c, g_addr, NULL, NULL);
    if (st.code) {
        fprintf(stderr, "bench_service: %s\n", st.msg);
        exit(1);
    }
    return c;
}

static int submit(rpc_client *c, char *id)
{
    Sherl__V1__SubmitJobRequest req = SHERL__V1__SUBMIT_JOB_REQUEST__INIT;
    req.spec_source_case = SHERL__V1__SUBMIT_JOB_REQUEST__SPEC_SOURCE_SPEC_JSON;
    req.spec_json = (char *)g_spec;
    uint8_t buf[8192];
    size_t len = sherl__v1__submit_job_request__pack(&req, buf);
    uint8_t *resp;
    size_t rl;
    rpc_status st;
    if (rpc_unary(c, "/sherl.v1.Sherl/SubmitJob", buf, len, &resp, &rl, 120, &st)) {
        fprintf(stderr, "bench_service: SubmitJob: %s %s\n", rpc_code_name(st.code), st.message);
        return -1;
    }
    Sherl__V1__Job *j = sherl__v1__job__unpack(NULL, rl, resp);
    free(resp);
    if (!j)
        return -1;
    if (id)
        snprintf(id, 64, "%s", j->id);
    sherl__v1__job__free_unpacked(j, NULL);
    return 0;
}

static samples g_get, g_submit, g_fanout, g_first;

static void *get_client(void *arg)
{
    (void)arg;
    rpc_client *c = connect_or_die();
    Sherl__V1__GetJobRequest req = SHERL__V1__GET_JOB_REQUEST__INIT;
    req.id = g_job;
    uint8_t buf[128];
    size_t len = sherl__v1__get_job_request__pack(&req, buf);
    for (int i = 0; i < g_calls; i++) {
        uint8_t *resp;
        size_t rl;
        rpc_status st;
        double t0 = bench_now();
        int code = rpc_unary(c, "/sherl.v1.Sherl/GetJob", buf, len, &resp, &rl, 60, &st);
        double t = bench_now() - t0;
        free(resp);
        if (code)
            g_get.errors++;
        else
            add(&g_get, t);
    }
    rpc_client_close(c);
    return NULL;
}

static void *submit_client(void *arg)
{
    (void)arg;
    rpc_client *c = connect_or_die();
    for (int i = 0; i < 2; i++) {
        double t0 = bench_now();
        if (submit(c, NULL))
            g_submit.errors++;
        else
            add(&g_submit, bench_now() - t0);
    }
    rpc_client_close(c);
    return NULL;
}

static int g_events_per_watcher[1024];

static void *watcher(void *arg)
{
    int k = (int)(long)arg;
    rpc_client *c = connect_or_die();
    Sherl__V1__WatchJobRequest req = SHERL__V1__WATCH_JOB_REQUEST__INIT;
    req.id = g_job;
    uint8_t buf[128];
    size_t len = sherl__v1__watch_job_request__pack(&req, buf);
    double t0 = bench_now();
    rpc_stream *s = rpc_stream_open(c, "/sherl.v1.Sherl/WatchJob", buf, len, 0);
    uint8_t *m;
    size_t ml;
    int first = 1;
    while (rpc_stream_read(s, &m, &ml) == 1) {
        double now_ms = bench_wall_ms();
        Sherl__V1__JobEvent *e = sherl__v1__job_event__unpack(NULL, ml, m);
        free(m);
        if (!e)
            continue;
        if (first)
            add(&g_first, bench_now() - t0), first = 0;
        /* live events only: replayed ones were committed before the stream opened */
        if (e->time_ms >= g_start_ms)
            add(&g_fanout, (now_ms - (double)e->time_ms) / 1e3);
        g_events_per_watcher[k]++;
        sherl__v1__job_event__free_unpacked(e, NULL);
    }
    rpc_status st;
    if (rpc_stream_finish(s, NULL, NULL, &st))
        g_fanout.errors++;
    rpc_client_close(c);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_service ADDR SPEC_JSON_FILE [--clients 64] [--calls 20] "
                        "[--watchers 100]\n");
        return 2;
    }
    g_addr = argv[1];
    int clients = 64, watchers = 100;
    bench_int_opt opts[] = {{"--clients", &clients}, {"--calls", &g_calls},
                            {"--watchers", &watchers}};
    if (bench_parse("bench_service", argc, argv, 3, opts, 3, NULL, NULL, 0))
        return 2;
    if (watchers > 1024)
        watchers = 1024;
    char *spec;
    size_t sl;
    sherl_status st = sherl_read_file(argv[2], 1 << 20, &spec, &sl);
    if (st.code) {
        fprintf(stderr, "bench_service: %s\n", st.msg);
        return 2;
    }
    g_spec = spec;
    pthread_mutex_init(&g_get.mu, NULL);
    pthread_mutex_init(&g_submit.mu, NULL);
    pthread_mutex_init(&g_fanout.mu, NULL);
    pthread_mutex_init(&g_first.mu, NULL);
    rpc_client *c = connect_or_die();
    if (submit(c, g_job))
        return 1;
    printf("job %s; %d watchers, %d clients x %d GetJob, %d clients x 2 SubmitJob\n", g_job,
           watchers, clients, g_calls, clients);
    g_start_ms = bench_wall_ms();
    pthread_t *th = calloc((size_t)(watchers > clients ? watchers : clients), sizeof *th);
    double t0 = bench_now();
    for (int i = 0; i < watchers; i++)
        pthread_create(&th[i], NULL, watcher, (void *)(long)i);
    for (int i = 0; i < watchers; i++)
        pthread_join(th[i], NULL);
    double watch_wall = bench_now() - t0;
    int lo = 1 << 30, hi = 0;
    for (int i = 0; i < watchers; i++) {
        if (g_events_per_watcher[i] < lo)
            lo = g_events_per_watcher[i];
        if (g_events_per_watcher[i] > hi)
            hi = g_events_per_watcher[i];
    }
    report("WatchJob: open -> first event", &g_first, 0);
    report("WatchJob: commit -> arrival (live)", &g_fanout, 0);
    printf("%-34s %d streams followed the job for %.1f s; events per stream %d..%d\n", "",
           watchers, watch_wall, lo, hi);
    t0 = bench_now();
    for (int i = 0; i < clients; i++)
        pthread_create(&th[i], NULL, get_client, NULL);
    for (int i = 0; i < clients; i++)
        pthread_join(th[i], NULL);
    report("GetJob", &g_get, bench_now() - t0);
    t0 = bench_now();
    for (int i = 0; i < clients; i++)
        pthread_create(&th[i], NULL, submit_client, NULL);
    for (int i = 0; i < clients; i++)
        pthread_join(th[i], NULL);
    report("SubmitJob (plans each spec)", &g_submit, bench_now() - t0);
    free(th);
    rpc_client_close(c);
    free(spec);
    return 0;
}
