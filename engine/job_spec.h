/* A training job: one JSON document holding everything about a run (DESIGN.md section 4).
 * The same for `sherl train` (local) and the daemon's SubmitJob. Every field is validated with a
 * message naming it, its value and what was expected; unknown fields are errors (typos must not
 * silently fall back to defaults).
 *
 * The schema (every key optional unless marked required; defaults in the struct below):
 *   {"name", "backbone" (required), "method", "sherl": {...}, "task": {...},
 *    "data": {"train" (required), ...}, "optim": {...}, "train": {...}, "resources": {...},
 *    "output"}
 * Rules that hold for every field:
 *   - An unknown key, at any level, is an error naming its path ("optim.lrr") and listing the
 *     keys allowed in that object; a key given twice is an error too.
 *   - null is the same as leaving the key out (the default applies); for the two required keys
 *     it reads as missing. job_spec_to_json writes null for the optional paths that are unset
 *     (data.validation, data.test) and for sherl.taps when it is unset.
 *   - Errors are SHERL_EFORMAT (bad JSON, bad or unknown field, too large) with a message
 *     "<label>: field '<path>' is <value>, expected <what>", or SHERL_EINVAL for bad arguments
 *     (NULL pointers), SHERL_EIO / SHERL_ENOMEM from reading and allocating.
 *   - Ranges: name 1..127 characters of [A-Za-z0-9._-] (not "." or ".."); optim.lr (0, 1],
 *     weight_decay and warmup_ratio [0, 1), clip_norm >= 0, beta1 and beta2 [0, 1),
 *     eps (0, 1e-2]; train.epochs 1..10000, max_steps >= 0, batch_size 1..65536, grad_accum
 *     1..4096, eval_every "epoch" or an integer >= 1, checkpoint_every >= 0, log_every >= 1,
 *     seed 0..2^53 (exact in a JSON number); data.max_length 3..8192 (room for [CLS] x [SEP]); sherl.late_layers >= 1,
 *     downsample_factor >= 1, side_dim >= 0, dropout [0, 1), taps 2..SHERL_MAX_TAPS increasing
 *     non-negative integers; task.text_fields 1 or 2 non-empty strings and label_field a
 *     non-empty string, each under 64 bytes; resources.device "cpu", "cuda" (a GPU),
 *     "cuda:N" (GPU N, 0..15) or "auto" (a GPU when one is usable, else the CPU), precision
 *     "fp32", "bf16" or "fp16" (the backbone's frozen weights in that type; on any device), ranks 1..4096, threads 0..1024, graphs a
 *     boolean. Number ranges are checked on the JSON value and on the float that is stored.
 *     What depends on the backbone
 *     (late_layers < L, taps <= L - k, side_dim <= D, max_length <= positions) is checked when
 *     the model is built (sherl_model_create), not here.
 *   - The "sherl" object is accepted with every method, so that comparing methods means
 *     changing one word; its fields are always validated, and apply where the method uses
 *     them: all of them for "sherl", late_layers for "late" (its trainable top layers), none
 *     for "full" and "linear". job_spec_to_json always writes it.
 *   - Paths (backbone, data.*, output) are non-empty strings; a relative one is joined to
 *     base_dir ("<base_dir>/<path>", no other normalisation; confinement to allowed data roots
 *     is the daemon's job). The result must fit JOB_PATH_MAX - 1 bytes, else it is an error
 *     (never truncated). The default output is "runs/<name>", resolved the same way. */
#ifndef SHERL_JOB_SPEC_H
#define SHERL_JOB_SPEC_H

#include <stdint.h>

#include "sherl_model.h"
#include "status.h"

#define JOB_PATH_MAX 4096
/* The largest job spec accepted, in bytes (text and file). */
#define JOB_SPEC_MAX_BYTES (1u << 20)

typedef enum { SCHEDULE_LINEAR = 0, SCHEDULE_COSINE, SCHEDULE_CONSTANT } lr_schedule;

/* "linear", "cosine", "constant" ("unknown" for other values). */
const char *lr_schedule_name(lr_schedule s);

typedef struct {
    char name[128];              /* "name": default "job" */
    char backbone[JOB_PATH_MAX]; /* "backbone": model folder (required) */
    sherl_options model;         /* "method": sherl|full|late|linear (default sherl);
                                  * "sherl": {"late_layers" 1, "downsample_factor" 2, "side_dim" 0
                                  * (= hidden / downsample_factor), "taps" null (= all of
                                  * h_0..h_{L-k}; n_taps 0), "dropout" 0.1, "tune_late" false};
                                  * task type and pooling; seed = train.seed; num_labels keeps
                                  * sherl_options_default's value: the trainer sets it from the data */
    /* "task": {"type": "classification"|"regression" (default classification), "pooling":
     *          "mean"|"cls" (default mean), "text_fields": ["text"] (default) or
     *          ["text_a", "text_b"], "label_field": "label" (default)} */
    char text_fields[2][64];
    int n_text_fields;
    char label_field[64];
    /* "data": {"train", "validation", "test" (paths; validation and test optional), "max_length"
     * (default 128)} — relative paths are resolved against the spec file's folder */
    char train[JOB_PATH_MAX], validation[JOB_PATH_MAX], test[JOB_PATH_MAX];
    int max_length;
    /* "optim": {"lr" 5e-4, "weight_decay" 0.01, "warmup_ratio" 0.06, "schedule" "linear",
     *           "clip_norm" 1.0 (0 = off), "beta1" 0.9, "beta2" 0.999, "eps" 1e-8} */
    float lr, weight_decay, warmup_ratio, clip_norm, beta1, beta2, eps;
    lr_schedule schedule;
    /* "train": {"epochs" 3, "max_steps" 0 (= epochs), "batch_size" 32, "grad_accum" 1,
     *           "eval_every" "epoch" or a number of steps, "checkpoint_every" 0 (= each epoch)
     *           steps, "seed" 17, "log_every" 10 steps} */
    int epochs, max_steps, batch_size, grad_accum, eval_every_steps, checkpoint_every, log_every;
    uint64_t seed;
    /* "resources": {"device" "cpu", "precision" "fp32", "ranks" 1, "threads" 0 (= all cores),
     *               "graphs" false (record a training pass into a CUDA graph and replay it:
     *               sherl_train_pass)} */
    char device[16], precision[8];
    int ranks, threads, graphs;
    char output[JOB_PATH_MAX];   /* "output": run folder (default "runs/<name>") */
} job_spec;

/* All defaults: name "job", no backbone or train path, output "runs/job" (unresolved). */
void job_spec_default(job_spec *spec);
/* Parses and validates len bytes of JSON (at most JOB_SPEC_MAX_BYTES; need not be
 * NUL-terminated). label (may be NULL) starts every message, e.g. the file name. base_dir (may
 * be NULL or "": paths stay as written) resolves relative paths. On success *spec is filled;
 * on error it holds job_spec_default's values, never a half-parsed spec. */
sherl_status job_spec_parse(job_spec *spec, const char *json, size_t len, const char *label,
                            const char *base_dir);
/* Reads the file (at most JOB_SPEC_MAX_BYTES) and parses it with the path as label and the
 * file's folder, made absolute with the current directory, as base_dir: relative paths in a
 * spec are relative to the spec file, and the resolved paths no longer depend on the current
 * directory. */
sherl_status job_spec_load(job_spec *spec, const char *path);
/* Writes the spec back as JSON (all fields, defaults filled in, paths as resolved): for
 * checkpoints and artifacts. Returns a malloc'd string (free() it), NULL when out of memory or
 * spec is NULL. For a spec that job_spec_parse produced, parsing the text again with base_dir
 * NULL (or any base_dir when the paths are absolute) gives an identical struct; floats are
 * written with the fewest digits that read back as the same float. spec->model.seed is not
 * written separately: it is train.seed. */
char *job_spec_to_json(const job_spec *spec);

#endif
