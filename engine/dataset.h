/* Labelled text datasets: JSONL ({"text": ..., "label": ...} or {"text_a": ..., "text_b": ...,
 * "label": ...}, field names configurable) and GLUE-style TSV with a header row. Texts are
 * tokenized once at load; batches are padded to their longest sequence; shuffling is seeded.
 * Every bad record is an error naming the file, the line and the reason. */
#ifndef SHERL_DATASET_H
#define SHERL_DATASET_H

#include <stdint.h>

#include "bert.h"
#include "sherl_model.h"
#include "status.h"
#include "tokenizer.h"

/* Limits on what dataset_load reads. */
#define DATASET_MAX_FILE_BYTES (4ull << 30) /* 4 GiB */
#define DATASET_MAX_LINE_BYTES (1u << 20)   /* 1 MiB per line (record) */

typedef struct {
    int n;
    char **names; /* label id -> name */
} label_map;

typedef struct {
    const char *text_a_field;  /* "text" for single sentences, "text_a" for pairs */
    const char *text_b_field;  /* NULL for single sentences */
    const char *label_field;   /* "label" */
    task_type task;
    int max_length;            /* tokens per example incl. [CLS]/[SEP] */
} dataset_options;

typedef struct {
    int n;
    tok_encoding *enc; /* [n] */
    int32_t *labels;   /* [n] classification */
    float *targets;    /* [n] regression */
    char path[1024];
    size_t mem_bytes;  /* host memory the loaded set holds (for the memory plan) */
} dataset;

/* Loads and tokenizes path (.jsonl / .json: JSON lines; .tsv: tab-separated with a header).
 * Classification: with build_labels, the label map is built from this file (the training set):
 * its distinct labels sorted (numerically when all are integers, else as strings); otherwise
 * every label must already be in the map ("unknown label 'x' at file:line"). Labels may be JSON
 * strings or integers. Regression: the label must be a finite number.
 * Errors: missing file, empty file (no examples), invalid UTF-8, malformed JSON or TSV row, missing
 * field, wrong type — each with file:line.
 * Details: a label's identity is its name (the integer 3 and the string "3" are the same label);
 * empty label names are refused. Blank lines are skipped; a trailing \r and a leading UTF-8 BOM
 * are tolerated. In TSV the first non-blank line is the header, a field is everything between
 * tabs (no quoting), labels are the field's text and regression targets the whole field read
 * by strtod. max_length 0 means the tokenizer's model_max_length; otherwise it must be >= 3.
 * With build_labels, *labels receives a fresh map on success (its old content is neither read
 * nor freed); regression ignores labels (may be NULL). On error *ds is zeroed and *labels is
 * unchanged. Only the array matching the task (labels or targets) is allocated. */
sherl_status dataset_load(dataset *ds, const char *path, const dataset_options *opt,
                          const wordpiece_tokenizer *tok, label_map *labels, int build_labels);
void dataset_free(dataset *ds);
void label_map_free(label_map *lm);
/* -1 when absent */
int label_map_find(const label_map *lm, const char *name);

/* The padded batch of examples idx[0..n) (host arrays); labels/targets (host, [n]) may be NULL.
 * The array the dataset's task does not have (labels of a regression set, targets of a
 * classification set) is filled with zeros. */
sherl_status dataset_batch(const dataset *ds, const int *idx, int n, int pad_id, bert_batch *batch,
                           int32_t *labels, float *targets);

/* perm = a seeded permutation of 0..n-1 for the given epoch (Fisher-Yates on the counter RNG,
 * so an epoch's order depends only on (seed, epoch): resumable). */
void dataset_shuffle(int *perm, int n, uint64_t seed, int epoch);

#endif
