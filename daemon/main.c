/* sherld: the daemon. Reads its configuration (file, then --flags), recovers the job store,
 * serves gRPC, and runs a libuv loop for signals: SIGTERM/SIGINT drain and exit 0, SIGHUP
 * reopens the log file. Tells systemd when it is ready and when it stops (sd_notify). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <uv.h>

#include "config.h"
#include "json_util.h"
#include "service.h"
#include "sherld.h"

static const char USAGE[] =
    "usage: sherld [--config FILE] [--OPTION VALUE ...]\n"
    "       sherld --help | --version | --print-config [...]\n"
    "\n"
    "The sherl daemon: keeps frozen backbones resident and runs SHERL fine-tuning jobs for\n"
    "clients over gRPC (sherl.v1.Sherl; see sherlctl). Options come from the file given with\n"
    "--config (deploy/sherld.conf.example documents each), then from flags, which win.\n"
    "\n"
    "  --config FILE    read options from FILE (\"name value\" lines)\n"
    "  --print-config   print the effective configuration and exit\n"
    "  --help           this text; --version: the version\n"
    "\n"
    "options (name, type, default, bounds):\n";

static sherld g_d;
static char g_log_path[SHERLD_PATH_MAX];

static void log_line(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_line(const char *level, const char *fmt, ...)
{
    char ts[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(stderr, "%s sherld %s: ", ts, level);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

static void reopen_log(void)
{
    if (g_log_path[0] && !freopen(g_log_path, "a", stderr))
        fprintf(stdout, "sherld: cannot reopen log file %s\n", g_log_path);
}

static void on_signal(uv_signal_t *h, int sig)
{
    if (sig == SIGHUP) {
        reopen_log();
        log_line("info", "SIGHUP: log reopened");
        return;
    }
    log_line("info", "%s: draining (running jobs checkpoint; up to %d s)",
             sig == SIGTERM ? "SIGTERM" : "SIGINT", g_d.cfg.drain_timeout_s);
    sd_notify(0, "STOPPING=1");
    uv_stop(h->loop);
}

static char *read_pem(const char *path, const char *what)
{
    char *data;
    size_t len;
    sherl_status st = sherl_read_file(path, 1 << 20, &data, &len);
    if (st.code) {
        log_line("error", "%s: %s", what, st.msg);
        return NULL;
    }
    return data;
}

int main(int argc, char **argv)
{
    sherld_config *cfg = &g_d.cfg;
    sherl_status st = config_defaults(cfg);
    const char *config_file = NULL;
    int print_config = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(USAGE, stdout);
            config_print_help(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("sherld %s\n", SHERLD_VERSION);
            return 0;
        }
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            config_file = argv[++i];
        else if (!strcmp(argv[i], "--print-config"))
            print_config = 1;
    }
    if (!st.code && config_file)
        st = config_load_file(cfg, config_file);
    for (int i = 1; !st.code && i < argc; i++) {
        if (!strcmp(argv[i], "--config")) {
            i++;
            continue;
        }
        if (!strcmp(argv[i], "--print-config"))
            continue;
        if (strncmp(argv[i], "--", 2) || i + 1 >= argc) {
            st = sherl_errorf(SHERL_EINVAL, "'%s': expected --OPTION VALUE (see sherld --help)",
                              argv[i]);
            break;
        }
        st = config_set(cfg, argv[i] + 2, argv[i + 1], "command line");
        i++;
    }
    if (!st.code)
        st = config_validate(cfg);
    if (st.code) {
        fprintf(stderr, "sherld: %s\n", st.msg);
        return 2;
    }
    if (print_config) {
        config_print(stdout, cfg);
        return 0;
    }
    if (cfg->log_file[0]) {
        snprintf(g_log_path, sizeof g_log_path, "%s", cfg->log_file);
        reopen_log();
    }
    uv_loop_t *loop = uv_default_loop();
    st = jobs_start(&g_d, loop);
    if (st.code) {
        log_line("error", "%s", st.msg);
        return 1;
    }
    char *cert = NULL, *key = NULL;
    if (cfg->tls_cert[0] && (!(cert = read_pem(cfg->tls_cert, "tls-cert")) ||
                             !(key = read_pem(cfg->tls_key, "tls-key"))))
        return 1;
    rpc_options ro = {cfg->listen, cfg->max_message_bytes, cert, key};
    int n_methods;
    const rpc_method *methods = service_methods(&n_methods);
    rpc_server *srv;
    int port;
    st = rpc_server_start(&srv, &ro, methods, n_methods, &g_d, &port);
    if (st.code) {
        log_line("error", "%s", st.msg);
        jobs_stop(&g_d);
        return 1;
    }
    /* the one line scripts wait for: the address actually bound (port 0 picks one) */
    if (port) {
        char host[256];
        snprintf(host, sizeof host, "%s", cfg->listen);
        char *colon = strrchr(host, ':');
        if (colon)
            *colon = 0;
        printf("sherld: listening on %s:%d\n", host, port);
    } else {
        printf("sherld: listening on %s\n", cfg->listen);
    }
    fflush(stdout);
    log_line("info", "version %s, state %s, memory budget %lld MiB, %d job(s) at a time%s",
             SHERLD_VERSION, cfg->state_dir, (long long)(g_d.budget >> 20),
             cfg->max_concurrent_jobs, g_d.tokens ? ", bearer tokens required" : "");
    for (int i = 1; i < g_d.n_pools; i++) /* no lock: no job thread runs before the loop does */
        log_line("info", "%s: %lld MiB, budget %lld MiB (gpu-memory-reserve %lld MiB)",
                 g_d.pools[i].name, (long long)(g_d.pools[i].total >> 20),
                 (long long)(g_d.pools[i].budget >> 20),
                 (long long)(cfg->gpu_memory_reserve >> 20));
    sd_notify(0, "READY=1");

    uv_signal_t sig_term, sig_int, sig_hup;
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_init(loop, &sig_hup);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_start(&sig_hup, on_signal, SIGHUP);
    uv_run(loop, UV_RUN_DEFAULT);

    jobs_stop(&g_d);
    rpc_server_stop(srv);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_close((uv_handle_t *)&sig_hup, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    uv_loop_close(loop);
    int left;
    int queued;
    jobs_counts(&g_d, &queued, &left);
    if (!left) { /* with a job still running past drain-timeout, its thread may still use them */
        job_store_close(g_d.store);
        backbones_free(&g_d.backbones);
        auth_free(g_d.tokens);
    }
    free(cert), free(key);
    log_line("info", "stopped%s", left ? " (a job did not stop in time: it resumes on restart)" : "");
    return 0;
}
