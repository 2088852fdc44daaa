/* `sherl train JOB.json`: runs a training job locally with a progress line. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "job_spec.h"
#include "trainer.h"

static volatile int cancel_requested;

static void on_signal(int sig)
{
    (void)sig;
    cancel_requested = 1;
}

static void fmt_duration(char *buf, size_t len, double s)
{
    if (!(s >= 0) || s > 1e7)
        snprintf(buf, len, "--:--");
    else if (s >= 3600)
        snprintf(buf, len, "%d:%02d:%02d", (int)s / 3600, (int)s / 60 % 60, (int)s % 60);
    else
        snprintf(buf, len, "%02d:%02d", (int)s / 60, (int)s % 60);
}

static void print_progress(void *ctx, const train_progress *p)
{
    (void)ctx;
    if (p->is_eval) {
        if (p->eval_accuracy || p->eval_macro_f1)
            fprintf(stderr, "eval %-10s step %d | loss %.4f | accuracy %.4f | macro-F1 %.4f\n",
                    p->eval_split, p->step, p->eval_loss, p->eval_accuracy, p->eval_macro_f1);
        else
            fprintf(stderr, "eval %-10s step %d | loss %.4f | pearson %.4f | spearman %.4f\n",
                    p->eval_split, p->step, p->eval_loss, p->eval_pearson, p->eval_spearman);
        return;
    }
    char eta[32];
    fmt_duration(eta, sizeof eta, p->eta_s);
    fprintf(stderr, "step %d/%d | epoch %d/%d | loss %.4f | lr %.2e | %.1f samples/s | ETA %s\n",
            p->step, p->total_steps, p->epoch + 1 > p->epochs ? p->epochs : p->epoch + 1, p->epochs,
            p->loss, p->lr, p->samples_per_s, eta);
}

int cmd_train(const char *job_path, const cli_train_opts *o)
{
    job_spec spec;
    sherl_status st = job_spec_load(&spec, job_path);
    if (st.code) {
        fprintf(stderr, "sherl train: %s\n", st.msg);
        return 2;
    }
    if (o->threads > 0)
        spec.threads = o->threads;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    train_hooks hooks = {.on_progress = print_progress, .cancel = &cancel_requested,
                         .stop_after_steps = o->stop_after, .resume = o->resume};
    fprintf(stderr, "sherl train: %s, method %s, backbone %s -> %s\n", spec.name,
            train_method_name(spec.model.method), spec.backbone, spec.output);
    train_result r;
    st = train_run(&spec, &hooks, &r);
    if (st.code) {
        fprintf(stderr, "sherl train: %s\n", st.msg);
        return 1;
    }
    if (r.stopped_early) {
        fprintf(stderr, "sherl train: stopped after step %d; checkpoint in %s/checkpoint "
                        "(continue with --resume)\n",
                r.steps, spec.output);
        return cancel_requested ? 130 : 0;
    }
    printf("%s: %d steps in %.1f s; metrics in %s/metrics.json\n", spec.name, r.steps, r.wall_s,
           spec.output);
    return 0;
}
