/* Runs a training job from its spec: loads the backbone, tokenizer and data, trains with AdamW
 * (schedule, clipping, gradient accumulation), evaluates, checkpoints atomically, resumes, and
 * writes the final metrics. Progress goes to a callback (the CLI prints it, the daemon streams
 * it). */
#ifndef SHERL_TRAINER_H
#define SHERL_TRAINER_H

#include <stdint.h>

#include "bert.h"
#include "job_spec.h"
#include "planner.h"
#include "status.h"

typedef struct {
    int step, total_steps, epoch, epochs;
    double loss;          /* mean training loss over the last log window */
    double lr;
    double samples_per_s; /* over the last log window */
    double elapsed_s, eta_s;
    int is_eval;          /* an evaluation just finished: the fields below are set */
    const char *eval_split;
    double eval_loss, eval_accuracy, eval_macro_f1, eval_pearson, eval_spearman;
} train_progress;

typedef struct {
    void (*on_progress)(void *ctx, const train_progress *p);
    void *ctx;
    volatile int *cancel;  /* set non-zero to stop at the next step (a checkpoint is written) */
    int stop_after_steps;  /* > 0: stop (with a checkpoint) once this many steps are done */
    int resume;            /* continue from output/checkpoint when it exists */
    const bert_model *backbone; /* NULL: load spec->backbone; else this resident copy, shared
                                 * read-only (it must be the same model; the daemon's
                                 * registry passes it) */
    const sherl_backend *backend; /* NULL: the one resources.device selects; else this one
                                   * (tests run the engine on special backends) */
} train_hooks;

typedef struct {
    int steps, epochs_done, stopped_early;
    int resumed_from_step;       /* the checkpoint's step when the run resumed, else -1 */
    double final_train_loss;
    double val_accuracy, val_macro_f1, val_pearson, val_spearman, val_loss;
    double test_accuracy, test_macro_f1, test_pearson, test_spearman, test_loss;
    int has_val, has_test;
    double wall_s;
    memory_plan plan;            /* the planner's numbers for this run */
    size_t measured_peak_bytes;  /* VmHWM during the run minus the RSS when it started */
    int peak_reset;              /* the high-water mark was restarted at the run's start (else
                                  * it counts from process start: an upper bound) */
    /* resources.graphs: passes recorded into a graph, passes run from one, and why passes ran
     * op by op instead (empty when none did) */
    long long graph_captures, graph_passes;
    char graph_note[240];
} train_result;

sherl_status train_run(const job_spec *spec, const train_hooks *hooks, train_result *result);

#endif
