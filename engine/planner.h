/* The memory planner: from a job spec, before anything big is allocated, the exact bytes of
 * every buffer a training run holds, grouped (DESIGN.md section 2, "Memory"). The arenas
 * (backbone, trainable parameters and their gradients and moments, the step) are sized by
 * the same layout code the trainer allocates with, so those lines are exact by construction;
 * host lines (tokenizer, data, trainer buffers) are computed from what the loaders hold, and
 * the op scratch line is the backend's own bound. The plan's peak is what the daemon admits
 * jobs against. */
#ifndef SHERL_PLANNER_H
#define SHERL_PLANNER_H

#include <stddef.h>
#include <stdio.h>

#include "dataset.h"
#include "hf_config.h"
#include "job_spec.h"
#include "kernels.h"
#include "sherl_model.h"
#include "status.h"
#include "tokenizer.h"

#define PLAN_MAX_ITEMS 24

typedef enum {
    PLAN_ARENA = 0, /* one allocation the trainer makes of exactly this size */
    PLAN_HOST,      /* host memory held by loaders and the trainer */
    PLAN_TRANSIENT  /* held only inside one call; counted at its largest */
} plan_kind;

typedef struct {
    char name[48];
    plan_kind kind;
    size_t bytes;
} plan_item;

typedef struct {
    char method[16];
    int B, T;               /* the step's batch shape: batch_size x longest example */
    int K, side_dim;        /* sherl: taps and side width */
    long long frozen_params, trainable_params;
    int n;
    plan_item items[PLAN_MAX_ITEMS];
    size_t arena_bytes;     /* sum of the PLAN_ARENA items */
    size_t step_bytes;      /* of which the training step's arena (sherl_step_bytes) */
    size_t backbone_bytes;  /* of which the frozen backbone, which jobs on one backbone share:
                             * a job's own bytes are peak_bytes - backbone_bytes */
    size_t peak_bytes;      /* everything: the run's planned peak resident memory */
} memory_plan;

/* What a job loads before it allocates its arenas: the backbone's config, the tokenizer and
 * the data with its label map. The planner and the trainer share this. */
typedef struct {
    hf_config cfg;
    wordpiece_tokenizer *tok;
    dataset train, val, test;
    label_map labels;
    int T;                  /* longest tokenized example over all splits (>= 2) */
    sherl_options opt;      /* the spec's options, num_labels set from the data */
} job_inputs;

sherl_status job_inputs_load(job_inputs *in, const job_spec *spec);
void job_inputs_free(job_inputs *in);

/* The plan of the arenas and the op scratch for a model of these options at batch B x T. */
sherl_status memory_plan_model(memory_plan *p, const hf_config *cfg, const sherl_options *opt,
                               const sherl_backend *be, int B, int T, int threads);
/* The whole plan of a job whose inputs are loaded. */
sherl_status memory_plan_job(memory_plan *p, const job_spec *spec, const job_inputs *in,
                             const sherl_backend *be);
/* Loads the inputs and plans: what `sherl plan` and the daemon's EstimateJob run. */
sherl_status plan_job(memory_plan *p, const job_spec *spec, const sherl_backend *be);

/* The backend a job runs on: resources.device "cpu"; "cuda" (the first usable GPU); "cuda:N"
 * (GPU N); "auto" (the first usable GPU, else cpu); SHERL_EUNSUPPORTED naming the reason when
 * the GPU asked for is not usable here. (The daemon places "cuda" and "auto" jobs on any of its
 * GPUs itself; this is the choice of one process.) */
sherl_status job_backend(const job_spec *spec, const sherl_backend **be);
/* The error for a device name that selects no backend here (field names it in the message):
 * SHERL_EINVAL for an unknown name, SHERL_EUNSUPPORTED with the reason for a GPU this node
 * cannot use. */
sherl_status backend_missing(const char *field, const char *device);

const plan_item *memory_plan_find(const memory_plan *p, const char *name);
void memory_plan_print(FILE *f, const memory_plan *p);
/* {"method", "batch", "seq_len", "peak_bytes", "arena_bytes", "items": [{name, kind, bytes}]};
 * a cJSON object (see cJSON.h) the caller owns, NULL when out of memory. */
struct cJSON *memory_plan_to_json(const memory_plan *p);

#endif
