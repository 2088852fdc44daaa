/* A fine-tuning model around a frozen backbone, for the four training methods that share this
 * engine so comparisons are honest (DESIGN.md section 2):
 *   sherl  — early route forward-only keeping the taps, MTSA, the k late layers (frozen unless
 *            tune_late), head; backprop through late layers into the MTSA
 *   late   — the last k layers trainable, no side module
 *   full   — embeddings and every layer trainable
 *   linear — frozen backbone, head only
 * The backbone's weights are shared read-only; trainable copies live in the model's param_set.
 * The backbone runs in inference mode (no dropout) for every method; only the MTSA has dropout. */
#ifndef SHERL_SHERL_MODEL_H
#define SHERL_SHERL_MODEL_H

#include <stdint.h>

#include "bert.h"
#include "mtsa.h"
#include "params.h"
#include "pooling.h"

typedef enum { METHOD_SHERL = 0, METHOD_FULL, METHOD_LATE, METHOD_LINEAR } train_method;
typedef enum { TASK_CLASSIFICATION = 0, TASK_REGRESSION } task_type;

#define SHERL_MAX_TAPS 256
#define SHERL_MAX_LAYERS 1024
/* Floats of the host buffer that copies backbone weights into trainable copies on device
 * backends (transient, in the memory plan). */
#define SHERL_COPY_CHUNK ((size_t)1 << 18)

typedef struct {
    train_method method;
    int late_layers;       /* k >= 1 (sherl, late) */
    int side_dim;          /* d'; 0 means hidden / downsample_factor */
    int downsample_factor; /* r, default 2 */
    int n_taps;            /* 0: all of h_0..h_{L-k} */
    int taps[SHERL_MAX_TAPS]; /* increasing, the last one L-k */
    float dropout;         /* MTSA dropout */
    int tune_late;
    task_type task;
    int num_labels;        /* classification: >= 2 */
    pool_mode pooling;
    uint64_t seed;         /* initialisation */
    sherl_precision precision; /* of the backbone's frozen weight matrices (memset 0: fp32) */
} sherl_options;

void sherl_options_default(sherl_options *o);
const char *train_method_name(train_method m);
sherl_status train_method_parse(const char *name, train_method *m);

typedef struct {
    const bert_model *bb;     /* NULL for a shape-only model (sherl_model_shape) */
    const sherl_backend *be;
    int device;               /* runs on a backend without host memory (bert_ffn_chunk) */
    hf_config cfg;
    sherl_options opt;
    int L, D, k;
    int K;              /* taps (sherl) */
    int *tap_layer;     /* [K] hidden-state index of each tap */
    param_set ps;
    mtsa side;          /* sherl only */
    bert_layer *layers; /* [L] the weights in use: the backbone's or trainable copies */
    bert_layer *grads;  /* [L] gradient pointers; all NULL for frozen layers */
    int *layer_trainable; /* [L] */
    bert_embeddings emb, emb_grads; /* full only: trainable copies */
    int head_w, head_b, out_dim;
    int (*layer_idx)[12]; /* [L] param indices of trainable layers' tensors */
    int emb_idx[5];       /* full: word, pos, type, ln.weight, ln.bias */
} sherl_model;

/* Validates the options against the backbone, registers and initialises every trainable
 * tensor (copies of trainable backbone weights, MTSA and head from a seeded generator). */
sherl_status sherl_model_create(sherl_model **out, const bert_model *bb, const sherl_options *opt);
/* The same validation and registration without weights or memory: for the memory planner,
 * which needs the trainable tensors' sizes before anything is loaded. device: the job runs on a
 * backend without host memory (the layouts size some chunks by it). */
sherl_status sherl_model_shape(sherl_model **out, const hf_config *cfg, const sherl_options *opt,
                               int device);
void sherl_model_free(sherl_model *m);

/* Activations of one training step for batches up to B x T. */
typedef struct {
    int B, T;
    bert_workspace ws;
    float **hidden;         /* [L+1]: buffers for the states this method keeps, else NULL */
    float *scratch[2];      /* [N,D] ping-pong for states not kept */
    bert_layer_acts *acts;  /* [L]: allocated for the layers backprop runs through */
    bert_layer_grad_ws gws;
    mtsa_acts side;
    float *y;               /* [N,D] MTSA output (sherl) */
    /* sherl: the taps as one block [K,N,D], which MTSA reads with batched ops: fp32 (taps; the
     * tap layers' hidden[] point into it) or, with a bf16/fp16 backbone, whose fp32 taps are not
     * kept, half (taps16); the other is NULL */
    float *taps;
    uint16_t *taps16;
    float *d_a, *d_b;       /* [N,D] gradient ping-pong */
    /* [L][4]: in a bf16/fp16 job, a trained layer's four matrices (Q|K|V, attention output,
     * feed-forward in, out) in half precision, rounded from the fp32 masters at each forward:
     * its products take half operands with fp32 sums, as autocast runs them; NULL otherwise */
    uint16_t *(*half_w)[4];
    int32_t *mask;          /* [B,T] on the backend */
    pooler pool;
    float *pooled, *d_pooled; /* [B,D] */
    float *logits, *probs, *d_logits; /* [B,C] */
    float *losses;          /* [B] */
    int32_t *labels;        /* [B] */
    float *targets;         /* [B] */
    float *final;           /* the last hidden state of the last forward (not owned; in scratch
                             * that the next backward overwrites) */
    float grad_scale;       /* multiplies the gradient of the mean loss, e.g. a micro-batch's
                             * share of an accumulated step; 1 after sherl_step_create */
    int last_B, last_T;
    sherl_arena arena;      /* every buffer above, in one allocation */
    /* Graphs (sherl_train_pass): asked for by the caller; the recorded pass and the shape and
     * gradient scale it was recorded at; why passes run op by op (empty while they use the
     * graph); counts of captures and of passes replayed */
    int graphs;
    void *graph;
    int graph_B, graph_T, graph_failed;
    float graph_scale;
    char graph_note[240];
    long long graph_captures, graph_passes;
    int profile;            /* non-zero: phase_s accumulates seconds per phase (the backend is
                             * synchronised at each phase boundary) */
    double phase_s[8];      /* see SHERL_PHASE_NAMES */
} sherl_step;

enum { PH_EMBED = 0, PH_FROZEN, PH_MTSA_FWD, PH_LATE_FWD, PH_HEAD, PH_LATE_BWD, PH_MTSA_BWD,
       PH_EMBED_BWD, SHERL_PHASES };
extern const char *const SHERL_PHASE_NAMES[SHERL_PHASES];

/* The step's buffers by what they are for, as the planner reports them. */
typedef enum {
    STEP_KEPT = 0,      /* hidden states kept for backward: taps, the late route's states */
    STEP_LAYER_ACTS,    /* per-layer activations of the layers backprop runs through */
    STEP_MTSA_ACTS,
    STEP_LAYER_SCRATCH, /* forward-only layers' scratch, shared with one layer's backward
                         * scratch; state and gradient ping-pong */
    STEP_FORWARD_WS,    /* the embedding sum and its statistics, ids, masks */
    STEP_HEAD,          /* pooling, logits, loss */
    STEP_HALF_WEIGHTS,  /* half copies of trained layers' matrices (bf16/fp16 jobs) */
    STEP_GROUPS
} sherl_step_group;
extern const char *const SHERL_STEP_GROUP_NAMES[STEP_GROUPS];

sherl_status sherl_step_check(const sherl_model *m, int B, int T);
/* Bytes of the step arena for batches up to B x T, in total and by group (may be NULL).
 * Works on a shape-only model. */
sherl_status sherl_step_bytes(const sherl_model *m, int B, int T, size_t *total,
                              size_t group_bytes[STEP_GROUPS]);
/* Carves every step buffer from ar; s->hidden [L+1], s->acts [L] and s->half_w [L] must be
 * allocated. */
void sherl_step_layout(sherl_step *s, const sherl_model *m, int B, int T, sherl_arena *ar,
                       size_t group_bytes[STEP_GROUPS]);
/* The shapes a step runs its ops at, for the backend's scratch (planner and prepare). */
sherl_scratch_shape sherl_step_scratch_shape(const sherl_model *m, int B, int T, int threads);

/* One arena of exactly sherl_step_bytes. */
sherl_status sherl_step_create(sherl_step *s, const sherl_model *m, int B, int T);
void sherl_step_free(sherl_step *s, const sherl_model *m);

/* Forward of one batch; *loss is the mean loss. labels (classification, [B], each in
 * [0, num_labels)) or targets (regression, [B]) are host arrays; either may be NULL for
 * inference (then *loss is not computed). logits_out (host, [B, out_dim]) may be NULL.
 * dropout_seed picks the MTSA dropout mask (train only). */
sherl_status sherl_forward(const sherl_model *m, sherl_step *s, const bert_batch *batch,
                           const int32_t *labels, const float *targets, int train,
                           uint64_t dropout_seed, double *loss, float *logits_out);
/* Backward of the last forward (train = 1, with labels/targets): accumulates the gradient of
 * the mean loss into m->ps's grad arena. */
void sherl_backward(sherl_model *m, sherl_step *s, uint64_t dropout_seed);
/* sherl_forward with the loss, then sherl_backward: one micro-batch of training. With s->graphs
 * set, on a backend that captures graphs (CUDA), the device work of the first pass is recorded
 * into a graph and every later pass of the same B x T and grad_scale replays it, one launch
 * instead of thousands; only the uploads and the loss read-back stay on the host. Passes run op
 * by op instead (s->graph_note says why) when the backend cannot capture, when a capture failed
 * (then never again for this step), when profiling, or when MTSA dropout is on (the graph would
 * replay one step's masks). The results are the same either way. */
sherl_status sherl_train_pass(sherl_model *m, sherl_step *s, const bert_batch *batch,
                              const int32_t *labels, const float *targets,
                              uint64_t dropout_seed, double *loss);
/* Why sherl_train_pass would run op by op with this step, or NULL when it would replay a graph. */
const char *sherl_graph_unusable(const sherl_model *m, const sherl_step *s);

#endif
