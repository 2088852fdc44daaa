/* The C BERT encoder against Hugging Face transformers (tests/oracle/bert_reference.py):
 * every hidden state h_0..h_L, on a random tiny BERT (max abs error <= 1e-5) and on the real
 * all-MiniLM-L6-v2 with a padded batch of real sentences (<= 1e-4), plus the sentence
 * embedding (cosine >= 0.99999 with the HF-computed one). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bert.h"
#include "safetensors.h"

#define REF_DIR SHERL_TEST_WORK "/bert"

static int32_t *read_i32(const safetensors_file *f, const char *name, int64_t *numel)
{
    const st_tensor *t = safetensors_find(f, name);
    cr_assert(t, "reference tensor %s missing", name);
    cr_assert(t->dtype == ST_I32, "%s: expected I32", name);
    int32_t *v = malloc(t->nbytes);
    memcpy(v, t->data, t->nbytes);
    *numel = t->numel;
    return v;
}

static float *read_f32_any(const safetensors_file *f, const char *name, int64_t *numel)
{
    const st_tensor *t = safetensors_find(f, name);
    cr_assert(t, "reference tensor %s missing", name);
    float *v = malloc(t->numel * sizeof(float));
    sherl_status st = safetensors_read_f32(f, name, v, t->ndim, t->shape);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    *numel = t->numel;
    return v;
}

/* Runs the model on the reference batch and returns the worst max-abs error over all states. */
static double compare_hidden_states(const char *model_dir, const char *ref_path, double tol,
                                    int keep_all)
{
    bert_model *m;
    sherl_status st = bert_load(&m, model_dir, sherl_backend_cpu());
    cr_assert(st.code == SHERL_OK, "bert_load(%s): %s", model_dir, st.msg);
    safetensors_file ref;
    st = safetensors_open(&ref, ref_path);
    cr_assert(st.code == SHERL_OK, "%s (run the fixture first): %s", ref_path, st.msg);
    const st_tensor *ids_t = safetensors_find(&ref, "input_ids");
    cr_assert(ids_t && ids_t->ndim == 2);
    int64_t n;
    bert_batch batch = {(int)ids_t->shape[0], (int)ids_t->shape[1], read_i32(&ref, "input_ids", &n),
                        read_i32(&ref, "token_type_ids", &n), read_i32(&ref, "attention_mask", &n)};
    int L = m->cfg.num_hidden_layers, D = m->cfg.hidden_size;
    size_t BTD = (size_t)batch.B * batch.T * D;
    bert_workspace ws;
    st = bert_workspace_create(&ws, m, batch.B, batch.T);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    float **hidden = calloc(L + 1, sizeof(float *));
    for (int i = 0; i <= L; i++)
        if (keep_all || i == L)
            hidden[i] = malloc(BTD * sizeof(float));
    st = bert_forward(m, &ws, &batch, hidden);
    cr_assert(st.code == SHERL_OK, "bert_forward: %s", st.msg);
    double worst = 0.0;
    for (int i = 0; i <= L; i++) {
        if (!hidden[i])
            continue;
        char name[32];
        snprintf(name, sizeof name, "hidden_%d", i);
        float *want = read_f32_any(&ref, name, &n);
        cr_assert(n == (int64_t)BTD, "%s has %lld elements, expected %zu", name, (long long)n, BTD);
        double err = 0.0;
        size_t at = 0;
        for (size_t k = 0; k < BTD; k++) {
            double e = fabs((double)hidden[i][k] - want[k]);
            if (!(e <= err)) {
                err = e;
                at = k;
            }
        }
        cr_expect(err <= tol, "%s h_%d: max abs error %.3g > %.1g at [%zu,%zu,%zu] (%g vs %g)",
                  model_dir, i, err, tol, at / (batch.T * D), at / D % batch.T, at % D,
                  (double)hidden[i][at], (double)want[at]);
        fprintf(stderr, "%s: h_%d max abs error %.3g\n", model_dir, i, err);
        if (err > worst)
            worst = err;
        free(want);
        free(hidden[i]);
    }
    free(hidden);
    bert_workspace_free(&ws);
    free(batch.input_ids), free(batch.token_type_ids), free(batch.attention_mask);
    safetensors_close(&ref);
    bert_free(m);
    return worst;
}

Test(bert_oracle, tiny_random_bert_all_hidden_states)
{
    compare_hidden_states(REF_DIR "/tiny", REF_DIR "/tiny_ref.safetensors", 1e-5, 1);
}

Test(bert_oracle, tiny_task_model_with_bert_prefix)
{
    compare_hidden_states(REF_DIR "/tiny_prefixed", REF_DIR "/tiny_ref.safetensors", 1e-5, 1);
}

Test(bert_oracle, tiny_only_final_state_kept)
{
    compare_hidden_states(REF_DIR "/tiny", REF_DIR "/tiny_ref.safetensors", 1e-5, 0);
}

Test(bert_oracle, minilm_all_hidden_states, .timeout = 120)
{
    compare_hidden_states(SHERL_MINILM_DIR, REF_DIR "/minilm_ref.safetensors", 1e-4, 1);
}

Test(bert_oracle, minilm_sentence_embedding, .timeout = 120)
{
    bert_model *m;
    sherl_status st = bert_load(&m, SHERL_MINILM_DIR, sherl_backend_cpu());
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    safetensors_file ref;
    st = safetensors_open(&ref, REF_DIR "/minilm_ref.safetensors");
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    const st_tensor *ids_t = safetensors_find(&ref, "input_ids");
    int64_t n;
    bert_batch batch = {(int)ids_t->shape[0], (int)ids_t->shape[1], read_i32(&ref, "input_ids", &n),
                        read_i32(&ref, "token_type_ids", &n), read_i32(&ref, "attention_mask", &n)};
    int D = m->cfg.hidden_size;
    bert_workspace ws;
    cr_assert(bert_workspace_create(&ws, m, batch.B, batch.T).code == SHERL_OK);
    float *emb = malloc((size_t)batch.B * D * sizeof(float));
    st = bert_sentence_embedding(m, &ws, &batch, emb);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    float *want = read_f32_any(&ref, "sentence_embedding", &n);
    for (int b = 0; b < batch.B; b++) {
        double dot = 0, na = 0, nb = 0;
        for (int k = 0; k < D; k++) {
            dot += (double)emb[b * D + k] * want[b * D + k];
            na += (double)emb[b * D + k] * emb[b * D + k];
            nb += (double)want[b * D + k] * want[b * D + k];
        }
        double cosv = dot / sqrt(na * nb);
        cr_expect(cosv >= 0.99999, "sentence %d: cosine %.8f < 0.99999", b, cosv);
        cr_expect(fabs(sqrt(na) - 1.0) < 1e-5, "sentence %d: norm %.8f, expected 1", b, sqrt(na));
    }
    free(emb), free(want);
    free(batch.input_ids), free(batch.token_type_ids), free(batch.attention_mask);
    bert_workspace_free(&ws);
    safetensors_close(&ref);
    bert_free(m);
}

/* ---- bad input: clear errors, no crash ---- */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

Test(bert_load_errors, missing_folder)
{
    bert_model *m = (bert_model *)1;
    sherl_status st = bert_load(&m, SHERL_TEST_WORK "/no/such/model", sherl_backend_cpu());
    cr_expect(st.code != SHERL_OK);
    cr_expect(m == NULL);
    cr_expect(strstr(st.msg, "no/such/model") != NULL, "message does not name the path: %s",
              st.msg);
}

Test(bert_load_errors, config_disagrees_with_weights)
{
    /* The tiny weights (hidden 32) under a config claiming hidden 64. */
    char dir[] = SHERL_TEST_WORK "/bert/mismatch";
    mkdir(dir, 0755);
    write_file(SHERL_TEST_WORK "/bert/mismatch/config.json",
               "{\"model_type\": \"bert\", \"vocab_size\": 101, \"hidden_size\": 64, "
               "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"intermediate_size\": 37, "
               "\"max_position_embeddings\": 40, \"type_vocab_size\": 2, \"hidden_act\": \"gelu\", "
               "\"layer_norm_eps\": 1e-12}");
    unlink(SHERL_TEST_WORK "/bert/mismatch/model.safetensors");
    cr_assert(symlink(REF_DIR "/tiny/model.safetensors",
                      SHERL_TEST_WORK "/bert/mismatch/model.safetensors") == 0);
    bert_model *m;
    sherl_status st = bert_load(&m, dir, sherl_backend_cpu());
    cr_expect(st.code != SHERL_OK);
    cr_expect(strstr(st.msg, "word_embeddings") != NULL, "message does not name the tensor: %s",
              st.msg);
}

Test(bert_load_errors, missing_layer)
{
    /* The tiny weights under a config claiming 4 layers: layer 3 is absent. */
    char dir[] = SHERL_TEST_WORK "/bert/short";
    mkdir(dir, 0755);
    write_file(SHERL_TEST_WORK "/bert/short/config.json",
               "{\"model_type\": \"bert\", \"vocab_size\": 101, \"hidden_size\": 32, "
               "\"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"intermediate_size\": 37, "
               "\"max_position_embeddings\": 40, \"type_vocab_size\": 2, \"hidden_act\": \"gelu\", "
               "\"layer_norm_eps\": 1e-12}");
    unlink(SHERL_TEST_WORK "/bert/short/model.safetensors");
    cr_assert(symlink(REF_DIR "/tiny/model.safetensors",
                      SHERL_TEST_WORK "/bert/short/model.safetensors") == 0);
    bert_model *m;
    sherl_status st = bert_load(&m, dir, sherl_backend_cpu());
    cr_expect(st.code != SHERL_OK);
    cr_expect(strstr(st.msg, "encoder.layer.3.") != NULL, "message does not name the tensor: %s",
              st.msg);
}

Test(bert_forward_errors, bad_batches_are_refused)
{
    bert_model *m;
    cr_assert(bert_load(&m, REF_DIR "/tiny", sherl_backend_cpu()).code == SHERL_OK);
    bert_workspace ws;
    cr_assert(bert_workspace_create(&ws, m, 2, 4).code == SHERL_OK);
    int32_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 8}, types[8] = {0}, mask[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    float *out[4] = {0};
    out[3] = malloc(8 * 32 * sizeof(float));
    bert_batch batch = {2, 4, ids, types, mask};
    cr_expect(bert_forward(m, &ws, &batch, out).code == SHERL_OK);
    ids[5] = 101; /* vocab is 101: out of range */
    sherl_status st = bert_forward(m, &ws, &batch, out);
    cr_expect(st.code == SHERL_EINVAL && strstr(st.msg, "101"), "%s", st.msg);
    ids[5] = -1;
    cr_expect(bert_forward(m, &ws, &batch, out).code == SHERL_EINVAL);
    ids[5] = 6;
    types[2] = 2;
    st = bert_forward(m, &ws, &batch, out);
    cr_expect(st.code == SHERL_EINVAL && strstr(st.msg, "token_type"), "%s", st.msg);
    types[2] = 0;
    mask[0] = 7;
    cr_expect(bert_forward(m, &ws, &batch, out).code == SHERL_EINVAL);
    mask[0] = 1;
    bert_batch big = {3, 4, ids, types, mask}; /* more rows than the workspace */
    cr_expect(bert_forward(m, &ws, &batch, out).code == SHERL_OK);
    cr_expect(bert_forward(m, &ws, &big, out).code == SHERL_EINVAL);
    bert_workspace ws2;
    st = bert_workspace_create(&ws2, m, 1, 41); /* max_position_embeddings is 40 */
    cr_expect(st.code == SHERL_EINVAL && strstr(st.msg, "40"), "%s", st.msg);
    free(out[3]);
    bert_workspace_free(&ws);
    bert_free(m);
}
