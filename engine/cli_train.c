/* `sherl train JOB.json`: runs a training job locally with a progress line.
 * `sherl plan JOB.json`: the job's memory plan, without running it. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>
#include <stdlib.h>

#include "cli.h"
#include "kernels.h"
#include "planner.h"
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

/* The spec at job_path with the command line's overrides; -1 after a message. */
static int load_spec(job_spec *spec, const char *job_path, const cli_train_opts *o,
                     const char *cmd)
{
    sherl_status st = job_spec_load(spec, job_path);
    if (st.code) {
        fprintf(stderr, "sherl %s: %s\n", cmd, st.msg);
        return -1;
    }
    if (o->threads > 0)
        spec->threads = o->threads;
    return 0;
}

int cmd_train(const char *job_path, const cli_train_opts *o)
{
    job_spec spec;
    if (load_spec(&spec, job_path, o, "train"))
        return 2;
    sherl_status st;
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
    if (r.resumed_from_step >= 0)
        fprintf(stderr, "resumed from the checkpoint at step %d\n", r.resumed_from_step);
    else if (o->resume)
        fprintf(stderr, "no checkpoint in %s/checkpoint: started from the beginning\n",
                spec.output);
    fprintf(stderr, "memory: planned peak %.1f MiB, measured %.1f MiB%s\n",
            r.plan.peak_bytes / 1048576.0, r.measured_peak_bytes / 1048576.0,
            r.peak_reset ? "" : " (since process start: the kernel refused a reset)");
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

int cmd_plan(const char *job_path, const cli_train_opts *o)
{
    job_spec spec;
    if (load_spec(&spec, job_path, o, "plan"))
        return 2;
    const sherl_backend *be;
    sherl_status st = job_backend(&spec, &be);
    if (st.code) {
        fprintf(stderr, "sherl plan: %s\n", st.msg);
        return 2;
    }
    memory_plan p;
    st = plan_job(&p, &spec, be);
    if (st.code) {
        fprintf(stderr, "sherl plan: %s\n", st.msg);
        return 1;
    }
    if (o->json) {
        cJSON *j = memory_plan_to_json(&p);
        char *text = j ? cJSON_Print(j) : NULL;
        cJSON_Delete(j);
        if (!text) {
            fprintf(stderr, "sherl plan: out of memory\n");
            return 1;
        }
        printf("%s\n", text);
        free(text);
    } else {
        memory_plan_print(stdout, &p);
    }
    return 0;
}
