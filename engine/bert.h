/* BERT-family encoder (post-LN), forward on any backend. Returns every hidden state
 * h_0 (embeddings after LayerNorm) .. h_L: these are the SHERL taps.
 *
 * Weights live on the model's backend; Q, K and V are fused at load time into one
 * [3D, D] Linear so a layer does one big product instead of three. */
#ifndef SHERL_BERT_H
#define SHERL_BERT_H

#include <stdint.h>

#include "arena.h"
#include "hf_config.h"
#include "kernels.h"
#include "pooling.h"
#include "status.h"
#include "tokenizer.h"

/* How a backbone's weight matrices and embedding tables are held: fp32, or bf16 / fp16 (half the
 * memory; products with half operands and fp32 accumulation, a trained layer's on half copies of
 * its fp32 masters; biases, LayerNorms and the encoder's activations in fp32, except the inputs
 * of products a layer keeps for its backward, kept rounded; a SHERL job keeps its taps in the
 * same half type). fp16 has bf16's memory and 3 more mantissa bits, but overflows above 65504. */
typedef enum { SHERL_FP32 = 0, SHERL_BF16 = 1, SHERL_FP16 = 2 } sherl_precision;

/* "fp32", "bf16" or "fp16"; -1 for anything else. */
int sherl_precision_parse(const char *name, sherl_precision *out);
const char *sherl_precision_name(sherl_precision p);

typedef struct {
    /* The four weight matrices are fp32 (the float pointers) or bf16 (the *16 pointers, the
     * float ones then NULL) in a bf16 backbone's frozen layers. */
    const uint16_t *qkv_w16, *attn_out_w16, *ffn_in_w16, *ffn_out_w16;
    float *qkv_w, *qkv_b;           /* [3D, D], [3D]: rows q | k | v */
    float *attn_out_w, *attn_out_b; /* [D, D], [D] */
    float *ln1_w, *ln1_b;           /* [D] attention output LayerNorm */
    float *ffn_in_w, *ffn_in_b;     /* [F, D], [F] */
    float *ffn_out_w, *ffn_out_b;   /* [D, F], [D] */
    float *ln2_w, *ln2_b;           /* [D] output LayerNorm */
} bert_layer;

typedef struct {
    /* bf16 backbones hold the three tables in bf16 (the float pointers then NULL) */
    const uint16_t *word16, *pos16, *type16;
    float *word;  /* [V, D] */
    float *pos;   /* [P, D] */
    float *type;  /* [TV, D] */
    float *ln_w, *ln_b;
} bert_embeddings;

typedef struct {
    hf_config cfg;
    const sherl_backend *be;
    sherl_precision prec; /* of the layers' weight matrices; embeddings, biases and
                           * LayerNorms are fp32 either way */
    bert_embeddings emb;
    bert_layer *layers; /* [L] */
    void *arena;        /* the one backend allocation every weight lives in */
    long long n_params;
    char dir[4096];     /* the model folder, to re-read fp32 weights of layers to train */
    /* model.safetensors as loaded (device, inode, size, mtime): a re-read checks it is the same
     * file, so trained layers never come from another checkpoint than the frozen ones */
    unsigned long long file_dev, file_ino;
    long long file_size, file_mtime_ns;
} bert_model;

/* Loads MODEL_DIR/config.json and MODEL_DIR/model.safetensors (names with or without the
 * "bert." prefix of task models). Every tensor's shape is checked against the config. */
sherl_status bert_load(bert_model **out, const char *model_dir, const sherl_backend *be);
/* The same, with the layers' weight matrices held in `prec` (bf16: rounded to nearest even
 * from the file's values, which may be F32, F16 or BF16). */
sherl_status bert_load_prec(bert_model **out, const char *model_dir, const sherl_backend *be,
                            sherl_precision prec);
/* Reads layer i's twelve tensors from the model file, in fp32, into dst's float pointers
 * (backend memory, allocated by the caller): the initial values of a layer to train, exact
 * also when the resident backbone holds the layer in bf16. */
sherl_status bert_read_layer_f32(const bert_model *m, int i, const bert_layer *dst);
/* The same for the embeddings (tables and LayerNorm) into dst's float pointers. */
sherl_status bert_read_embeddings_f32(const bert_model *m, const bert_embeddings *dst);
/* Floats of the weights bert_load keeps (Q, K, V fused), from the config alone. */
size_t bert_param_count(const hf_config *c);
/* Bytes of backend memory the resident weights take at this precision. */
size_t bert_weight_bytes(const hf_config *c, sherl_precision prec);
/* Host staging bert_load needs while loading onto be (0 for host-memory backends). */
size_t bert_load_staging_bytes(const hf_config *c, const sherl_backend *be);
/* Host memory a bf16/fp16 load holds while it rounds each table and matrix, besides the staging
 * (0 for fp32). */
size_t bert_load_wide_bytes(const hf_config *c, const sherl_backend *be, sherl_precision prec);
void bert_free(bert_model *m);

/* A padded batch on the host: [B, T] each, row-major. token_type_ids may be NULL (zeros). */
typedef struct {
    int B, T;
    int32_t *input_ids;
    int32_t *token_type_ids;
    int32_t *attention_mask;
} bert_batch;

/* Pads encodings to the longest one (pad id, type 0, mask 0). Free with bert_batch_free. */
sherl_status bert_batch_from_encodings(bert_batch *batch, const tok_encoding *encs, int n,
                                       int pad_id);
/* Pads a batch out to T tokens the same way (a fixed shape, for a replayed graph); T must be at
 * least batch->T. On failure the batch is unchanged. */
sherl_status bert_batch_pad_to(bert_batch *batch, int T, int pad_id);
void bert_batch_free(bert_batch *batch);

/* Activations of one layer's forward, kept for its backward. Buffers on the backend. */
typedef struct {
    /* [B,T,3D] kept whole by a backprop layer (qkv_whole), else one attention chunk's
     * [chunk_rows,3D] (forward scratch). A half layer rounds Q|K|V as autocast's Linear returns
     * them (its attention reads them widened), and a backprop half layer keeps them only so, in
     * qkv16 [B,T,3D] (qkv then forward scratch; NULL otherwise). */
    float *qkv;
    int qkv_whole;
    uint16_t *qkv16;
    /* the attention probabilities of one chunk of sequences, never kept (a backward computes
     * them again from qkv): probs_n floats, a pass takes as many sequences as fit them and
     * chunk_rows tokens (bert_attn_seqs) */
    float *probs;
    size_t probs_n;
    int chunk_rows;
    float *attn;     /* [B,T,D] attention output before the projection */
    float *res1;     /* [B,T,D] projection + residual (LayerNorm 1 input) */
    float *ln1;      /* [B,T,D] */
    float *ln1_mean, *ln1_rstd; /* [B*T] */
    /* forward scratch for one chunk of tokens (bert_ffn_chunk), not kept: the backward
     * recomputes them from ln1 */
    float *ffn_pre;  /* [chunk,F] before GELU */
    float *ffn_act;  /* [chunk,F] after GELU */
    int ffn_rows;    /* their chunk's rows at the layout: a pass's chunk is never larger */
    float *res2;     /* [B,T,D] (LayerNorm 2 input) */
    float *ln2_mean, *ln2_rstd; /* [B*T] */
    /* A half layer (bf16/fp16 matrices) keeps attn and ln1 only rounded, as its products read
     * them (attn only when the layer trains: a frozen one's backward never reads it); attn and
     * ln1 are then forward scratch. NULL otherwise. */
    uint16_t *attn16, *ln1_16; /* [B,T,D] */
    /* a trained half layer's input, rounded: the Q|K|V weight gradient's operand (the caller
     * then need not keep the input); NULL otherwise */
    uint16_t *inp16;           /* [B,T,D] */
    /* 1: kept for a backward (bert_layer_acts_layout); 0: forward scratch, whose LayerNorm
     * inputs (res1, res2) then need not be written */
    int kept;
} bert_layer_acts;

/* Scratch for the forward of batches up to B x T (one layer's activations, reused). */
typedef struct {
    const sherl_backend *be;
    int B, T, D, F, NH;
    bert_layer_acts acts;
    float *emb;      /* [B,T,D] embedding sum, then scratch for states not kept (a training
                      * step's workspace: the step points it at a buffer of its own) */
    float *tmp;      /* [B,T,D] second scratch for states not kept */
    float *mask_add; /* [B,T] additive attention mask */
    int32_t *ids, *types, *positions; /* [B*T] on the backend */
    float *emb_mean, *emb_rstd;
    uint16_t *act16; /* half models: an operand of a half product, rounded (see the layout) */
    size_t act16_n;  /* its halves: at least one row of any product's operand, and a whole
                      * feed-forward chunk's [chunk, F] (bias_gelu_half_forward writes it) */
    sherl_arena own; /* the arena of bert_workspace_create; empty when carved from another */
} bert_workspace;

/* SHERL_EINVAL unless 0 < B and 0 < T <= max_position_embeddings. */
sherl_status bert_workspace_check(const hf_config *c, int B, int T);
/* Carves the workspace for batches up to B x T from ar (see arena.h); B, T checked by
 * bert_workspace_check; device: the backend has no host memory (bert_ffn_chunk), said apart
 * from be because the planner lays out without one. for_step: a training step's, which carves
 * ws->acts and ws->emb itself (shared with its backward scratch unless its backward reads them)
 * and has its own state buffers (no tmp). */
void bert_workspace_layout(bert_workspace *ws, const hf_config *c, const sherl_backend *be,
                           int device, sherl_precision prec, int B, int T, sherl_arena *ar,
                           int for_step);
/* A workspace in an arena of its own. */
sherl_status bert_workspace_create(bert_workspace *ws, const bert_model *m, int B, int T);
void bert_workspace_free(bert_workspace *ws);
/* Rows of tokens the feed-forward block runs at a time (N = B*T). On the CPU (device 0) about
 * N*D/(2F), so that each of its [rows, F] buffers holds about half as many floats as one hidden
 * state: memory, where BLAS runs any such row count at full speed. On a device (a backend
 * without host memory) at least BERT_FFN_DEVICE_ROWS, up to N: a chunk's products have [rows, F]
 * and [rows, D] outputs, and a GPU fills its multiprocessors only with thousands of rows (at
 * BERT-base's 64 x 128, N*D/(2F) is 1024 rows: the second product's [1024, 768] output is 48
 * tiles of 128 x 128 for an H100's 132 SMs). The layouts and the layer's passes call it with the
 * same arguments, so they agree. */
#define BERT_FFN_DEVICE_ROWS 8192
int bert_ffn_chunk(const hf_config *c, int N, int device);
/* The device rows above for this process (rows <= 0: back to BERT_FFN_DEVICE_ROWS): a knob for
 * benchmarks and tests (bench_gpu_train --ffn-rows), set before any layout: a layout in use
 * keeps its buffers' rows (bert_layer_acts.ffn_rows), and its passes never take more, but a
 * larger value set after it only takes effect in layouts made after. */
void bert_set_ffn_device_rows(int rows);
/* Whether a device's forward-only half layers run fused (linear_half16_forward, then
 * attention_half16_forward: no probabilities, no fp32 Q|K|V; the default, 1) or as a layer that
 * trains does (0), for benchmarks that time both (bench_gpu_train --fused-forward). Either is
 * the method's arithmetic; only the tensor cores' order of the P V sums differs. */
void bert_set_fused_forward(int on);
/* A pass's feed-forward chunk over N tokens: bert_ffn_chunk's, within the rows its buffers were
 * laid out for (layout_rows: bert_layer_acts.ffn_rows; 0: no bound). */
int bert_ffn_pass_rows(const hf_config *c, int N, int device, int layout_rows);
/* Sequences of T tokens one pass of the attention block takes, for buffers of probs_n floats of
 * probabilities and chunk_rows tokens (a bert_layer_acts'): at least 1, at most B. */
int bert_attn_seqs(const bert_layer_acts *a, int NH, int B, int T);
/* A backprop layer's kept activations, each its own buffer, with qkv whole. A half layer (prec
 * not fp32) keeps qkv, attn and ln1 only rounded, as qkv16 / attn16 / ln1_16 (attn16, and inp16,
 * only when it trains). probs, ffn_pre and ffn_act (and a half layer's qkv, attn and ln1) are
 * NULL here: bert_layer_acts_share_scratch points them (and probs_n, chunk_rows) at a
 * forward-only layer's buffers (bert_layer_scratch_layout). */
void bert_layer_acts_layout(bert_layer_acts *a, sherl_arena *ar, int B, int T, int D,
                            sherl_precision prec, int trained);
void bert_layer_acts_share_scratch(bert_layer_acts *a, const bert_layer_acts *scratch);
/* A forward-only layer's buffers (nothing kept for a backward), overlapped where their lives do
 * not meet: max(BTD + chunk_rows 3D + probs_n, 2 BTD + 2 chunk F) floats, with the attention
 * block's chunk buffers about half a hidden state's floats at most. */
void bert_layer_scratch_layout(bert_layer_acts *a, sherl_arena *ar, const hf_config *c, int B,
                               int T, int device);

/* Validates the batch (ids within the vocabulary, types within type_vocab_size, T within
 * max_position_embeddings, mask 0/1) and uploads it; fills h0 [B,T,D]. */
sherl_status bert_embed_forward(const bert_model *m, bert_workspace *ws, const bert_batch *batch,
                                float *h0);
/* The same with other embedding weights (a trainable copy). ws->emb keeps the embedding sum
 * (the LayerNorm input) and ws->emb_mean/emb_rstd its statistics until ws is next used. */
sherl_status bert_embed_forward_weights(const bert_model *m, const bert_embeddings *w,
                                        bert_workspace *ws, const bert_batch *batch, float *h0);
/* bert_embed_forward_weights in two: the batch validated and uploaded into ws (host copies),
 * then the embedding ops alone on what was uploaded (no host transfer: a device may record them
 * into a graph). */
sherl_status bert_embed_upload(const bert_model *m, bert_workspace *ws, const bert_batch *batch);
void bert_embed_compute(const bert_model *m, const bert_embeddings *w, bert_workspace *ws, int B,
                        int T, float *h0);
/* Backward of bert_embed_forward_weights for the batch last embedded with ws: gradients of the
 * tables and the LayerNorm accumulate into grads; d_sum [B,T,D] is scratch. */
void bert_embed_backward(const bert_model *m, const bert_embeddings *w,
                         const bert_embeddings *grads, bert_workspace *ws, float *d_sum,
                         const float *dh0, int B, int T);
/* out[B,T,D] = layer(inp); acts receives what backward needs. act16 / act16_n: the workspace's,
 * needed when the layer's matrices are bf16/fp16, else NULL / 0. */
void bert_layer_forward(const bert_model *m, const bert_layer *layer, bert_layer_acts *acts,
                        float *out, const float *inp, const float *mask_add, uint16_t *act16,
                        size_t act16_n, int B, int T);
/* The same in a half model with the rounded copies a caller keeps: out16 [B,T,D], when not
 * NULL, gets half(out) from the last LayerNorm (a kept half tap, written in the same pass);
 * inp16, when not NULL, is half(inp) already (the tap kept of the input), which the layer's
 * products then read instead of rounding inp again. The same bits as bert_layer_forward. */
void bert_layer_forward_halves(const bert_model *m, const bert_layer *layer,
                               bert_layer_acts *acts, float *out, uint16_t *out16,
                               const float *inp, const uint16_t *inp16, const float *mask_add,
                               uint16_t *act16, size_t act16_n, int B, int T);
/* Scratch for one layer's backward, reusable across layers of the same shape: [B,T,D] gradient
 * buffers, the feed-forward block's [chunk,F] ones (ffn_pre recomputed, its gelu and their
 * gradients) and the attention block's for one chunk of sequences (the probabilities computed
 * again, the gradients of the attention output and of Q|K|V); the attention block's overlap the
 * feed-forward block's. The chunk buffers have the capacities of the forward-only layers'
 * (bert_layer_scratch_layout), so forward and backward take the same chunks. */
typedef struct {
    float *d_res2, *d_ln1, *ffn_pre, *d_ffn_act, *d_ffn_pre, *d_res1;
    int ffn_rows;  /* the rows of ffn_pre, d_ffn_act, d_ffn_pre (as bert_layer_acts') */
    float *d_attn; /* [chunk_rows, D] */
    float *d_qkv;  /* [chunk_rows, 3D] */
    float *probs;  /* probs_n */
    float *qkv;    /* [chunk_rows, 3D]: a half layer's kept Q|K|V of one chunk, widened */
} bert_layer_grad_ws;

void bert_layer_grad_ws_layout(bert_layer_grad_ws *g, sherl_arena *ar, const hf_config *c, int B,
                               int T, int device);

/* Backward of bert_layer_forward: dinp[B,T,D] += d(out)/d(inp) . dout (dinp may be NULL), and,
 * when grads is not NULL, every weight gradient accumulates into the matching field of grads
 * (a bert_layer whose pointers point at gradient buffers). inp is the layer's input (not read
 * when acts->inp16 holds it, or when the layer is frozen), acts what
 * its forward saved (acts->probs, ffn_pre and ffn_act are not read), mask_add the forward's. */
void bert_layer_backward(const bert_model *m, const bert_layer *layer, const bert_layer *grads,
                         const bert_layer_acts *acts, bert_layer_grad_ws *ws, float *dinp,
                         const float *dout, const float *inp, const float *mask_add,
                         uint16_t *act16, size_t act16_n, int B, int T);

/* Runs the whole encoder. hidden[i] (i = 0..L) are [B,T,D] backend buffers; hidden[i] may be
 * NULL for states the caller does not need, except that the final state needs somewhere to go:
 * hidden[L] must not be NULL. */
sherl_status bert_forward(const bert_model *m, bert_workspace *ws, const bert_batch *batch,
                          float **hidden);

/* Sentence embedding as sentence-transformers defines it: the last hidden state pooled
 * (mean: sum_t mask h_L / sum_t mask; cls: h_L[:, 0]) then L2-normalised; out [B,D]. */
sherl_status bert_sentence_embedding(const bert_model *m, bert_workspace *ws,
                                     const bert_batch *batch, pool_mode mode, float *out);

#endif
