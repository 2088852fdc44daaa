/* sherl — offline engine tools: inspect a model folder, tokenize, embed. No daemon needed. */
#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bert.h"
#include "cli.h"
#include "hf_config.h"
#include "json_util.h"
#include "safetensors.h"
#include "tokenizer.h"

static const char USAGE[] =
    "usage: sherl <command> [options] MODEL_DIR [TEXT...]\n"
    "       sherl train [--resume] [--stop-after N] [--threads N] JOB.json\n"
    "       sherl inspect --devices\n"
    "\n"
    "Offline tools of the sherl engine for Hugging Face BERT-family model folders\n"
    "(config.json, model.safetensors, vocab.txt, tokenizer_config.json).\n"
    "\n"
    "commands:\n"
    "  inspect MODEL_DIR            config, tensors (name, dtype, shape) and parameter count\n"
    "  inspect --devices            the compute devices found: each CUDA GPU (name, compute\n"
    "                               capability, memory) or why none is usable, and the CPU\n"
    "  tokenize MODEL_DIR [TEXT...] one JSON object per text and line: input_ids,\n"
    "                               token_type_ids, attention_mask (as HF BertTokenizer with\n"
    "                               truncation=True)\n"
    "  train JOB.json               fine-tune as the job spec says (method, data, optimizer,\n"
    "                               output folder), with a progress line; writes checkpoints\n"
    "                               and OUTPUT/metrics.json. Ctrl-C stops with a checkpoint\n"
    "  plan JOB.json                the memory the job will use, by buffer group, before\n"
    "                               anything is allocated (reads config, tokenizer, data)\n"
    "  embed MODEL_DIR [TEXT...]    a JSON array holding one array of floats per text: the\n"
    "                               mean-pooled (or --pooling cls), L2-normalised last hidden\n"
    "                               state (sentence-transformers' definition)\n"
    "\n"
    "With no TEXT, texts are read from standard input, one per line.\n"
    "\n"
    "options:\n"
    "  --max-length N   truncate to N tokens including [CLS]/[SEP]. Default: tokenize uses\n"
    "                   the tokenizer's model_max_length; embed uses max_seq_length from\n"
    "                   sentence_bert_config.json when present, else the same\n"
    "  --pair           tokenize: consecutive texts are sentence pairs (A B A B ...)\n"
    "  --batch-size N   embed: texts per forward pass (default 32)\n"
    "  --pooling MODE   embed: mean or cls. Default: what the folder's 1_Pooling/config.json\n"
    "                   says (sentence-transformers layout), else mean\n"
    "  --threads N      compute threads (default: the number of online CPUs; for train:\n"
    "                   resources.threads of the spec)\n"
    "  --resume         train: continue from the output folder's checkpoint\n"
    "  --stop-after N   train: stop with a checkpoint after N optimizer steps\n"
    "  -h, --help       this text\n";

typedef struct {
    int max_length, pair, batch_size, threads;
    const char *pooling; /* NULL: from the model folder */
    int resume, stop_after, threads_given, json, devices;
} cli_opts;

static int fail(sherl_status st)
{
    fprintf(stderr, "sherl: %s\n", st.msg);
    return 1;
}

static int parse_int(const char *flag, const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "sherl: %s expects an integer in [%d, %d], got '%s'\n", flag, lo, hi,
                s ? s : "(nothing)");
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* Texts from argv, or lines of stdin when there are none. */
static char **collect_texts(int argc, char **argv, int *n)
{
    if (argc > 0) {
        *n = argc;
        char **t = malloc(sizeof(char *) * (size_t)argc);
        for (int i = 0; t && i < argc; i++)
            t[i] = strdup(argv[i]);
        return t;
    }
    char **t = NULL;
    int cap = 0;
    *n = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, stdin)) >= 0) {
        if (len > 0 && line[len - 1] == '\n')
            line[len - 1] = 0;
        if (*n == cap) {
            cap = cap ? 2 * cap : 64;
            char **nt = realloc(t, sizeof(char *) * (size_t)cap);
            if (!nt)
                break;
            t = nt;
        }
        t[(*n)++] = strdup(line);
    }
    free(line);
    return t;
}

static void free_texts(char **t, int n)
{
    for (int i = 0; i < n; i++)
        free(t[i]);
    free(t);
}

static void print_int_array(const int32_t *v, int n)
{
    putchar('[');
    for (int i = 0; i < n; i++)
        printf(i ? ", %d" : "%d", v[i]);
    putchar(']');
}

/* ------------------------------------------------------------------------------------------ */

/* What `auto` would pick, and why: every CUDA device, or the runtime's reason for none. */
static int cmd_devices(void)
{
    sherl_device_info dev[16];
    char why[256], desc[512];
    int n = sherl_cuda_devices(dev, 16, why, sizeof why);
    if (n == 0)
        printf("cuda   none usable: %s\n", why);
    for (int i = 0; i < n && i < 16; i++)
        printf("cuda:%d %s, compute capability %d.%d, %d SMs, %.1f GiB (%.1f GiB free)%s\n",
               dev[i].index, dev[i].name, dev[i].cc_major, dev[i].cc_minor,
               dev[i].multiprocessors, dev[i].total_bytes / 1073741824.0,
               dev[i].free_bytes / 1073741824.0,
               sherl_backend_cuda_device(i) ? ""
                                            : ", not usable (this build runs on sm_90 and later, "
                                              "or SHERL_CUDA_DISABLE is set)");
    sherl_backend_cpu()->describe(desc, sizeof desc);
    printf("cpu    %s\n", desc);
    char label[64];
    sherl_backend_label(sherl_backend_by_name("auto"), label, sizeof label);
    printf("auto   %s\n", label);
    return 0;
}

static int cmd_inspect(const char *dir)
{
    char path[4096];
    hf_config cfg;
    snprintf(path, sizeof path, "%s/config.json", dir);
    sherl_status st = hf_config_load(&cfg, path);
    if (st.code)
        return fail(st);
    printf("model        %s\n", dir);
    printf("model_type   %s\n", cfg.model_type_name);
    printf("layers       %d\nhidden       %d\nheads        %d\nintermediate %d\n",
           cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
           cfg.intermediate_size);
    printf("vocab        %d\nmax_position %d\ntype_vocab   %d\nln_eps       %g\n", cfg.vocab_size,
           cfg.max_position_embeddings, cfg.type_vocab_size, cfg.layer_norm_eps);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    safetensors_file sf;
    st = safetensors_open(&sf, path);
    if (st.code)
        return fail(st);
    long long params = 0;
    size_t bytes = 0;
    printf("tensors      %d\n", sf.n_tensors);
    for (int i = 0; i < sf.n_tensors; i++) {
        const st_tensor *t = &sf.tensors[i];
        printf("  %-60s %-4s [", t->name, st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            printf(d ? ", %lld" : "%lld", (long long)t->shape[d]);
        printf("]\n");
        params += t->numel;
        bytes += t->nbytes;
    }
    printf("parameters   %lld (%.1f MB in the file)\n", params, bytes / 1e6);
    char desc[256];
    sherl_backend_cpu()->describe(desc, sizeof desc);
    printf("backend      %s\n", desc);
    safetensors_close(&sf);
    wordpiece_tokenizer *tok;
    st = wordpiece_load(&tok, dir);
    if (st.code) {
        printf("tokenizer    none (%s)\n", st.msg);
    } else {
        const wordpiece_options *o = wordpiece_get_options(tok);
        printf("tokenizer    wordpiece, %d tokens, lowercase %s, model_max_length %d\n",
               wordpiece_vocab_size(tok), o->do_lower_case ? "yes" : "no", o->model_max_length);
        wordpiece_free(tok);
    }
    return 0;
}

static int cmd_tokenize(const char *dir, char **texts, int n, const cli_opts *o)
{
    wordpiece_tokenizer *tok;
    sherl_status st = wordpiece_load(&tok, dir);
    if (st.code)
        return fail(st);
    if (o->pair && n % 2) {
        fprintf(stderr, "sherl: --pair needs an even number of texts, got %d\n", n);
        wordpiece_free(tok);
        return 2;
    }
    int rc = 0;
    for (int i = 0; i < n; i += o->pair ? 2 : 1) {
        tok_encoding enc;
        st = wordpiece_encode(tok, texts[i], o->pair ? texts[i + 1] : NULL, o->max_length, &enc);
        if (st.code) {
            fprintf(stderr, "sherl: text %d: %s\n", i + 1, st.msg);
            rc = 1;
            break;
        }
        printf("{\"input_ids\": ");
        print_int_array(enc.input_ids, enc.len);
        printf(", \"token_type_ids\": ");
        print_int_array(enc.token_type_ids, enc.len);
        printf(", \"attention_mask\": ");
        print_int_array(enc.attention_mask, enc.len);
        printf("}\n");
        tok_encoding_free(&enc);
    }
    wordpiece_free(tok);
    return rc;
}

/* sentence-transformers' small JSON configs in the model folder. */
#define ST_CONFIG_MAX_BYTES ((size_t)1 << 20)

/* The JSON object in DIR/NAME, or NULL when the file is absent or unusable (unreadable, too
 * large, not a JSON object): the caller then keeps its default, as before the file existed. */
static cJSON *folder_config(const char *dir, const char *name, char *path, size_t cap)
{
    if ((size_t)snprintf(path, cap, "%s/%s", dir, name) >= cap)
        return NULL;
    cJSON *root = NULL;
    if (json_load_object(path, ST_CONFIG_MAX_BYTES, &root).code != SHERL_OK)
        return NULL;
    return root;
}

/* sentence-transformers' max_seq_length, or 0 when the folder has no sentence_bert_config
 * (or it holds no usable value). */
static int sentence_max_length(const char *dir)
{
    char path[4096];
    cJSON *j = folder_config(dir, "sentence_bert_config.json", path, sizeof path);
    int v = 0;
    if (j && json_get_int(j, path, "max_seq_length", 2, 1 << 20, &v).code != SHERL_OK)
        v = 0;
    cJSON_Delete(j);
    return v;
}

/* sentence-transformers keeps its pooling choice in 1_Pooling/config.json; mean when absent. */
static pool_mode folder_pooling(const char *dir)
{
    char path[4096];
    cJSON *j = folder_config(dir, "1_Pooling/config.json", path, sizeof path);
    int cls = 0;
    if (j && json_get_bool(j, path, "pooling_mode_cls_token", &cls).code != SHERL_OK)
        cls = 0;
    cJSON_Delete(j);
    return cls ? POOL_CLS : POOL_MEAN;
}

typedef struct {
    int idx, len;
} len_idx;

static int by_len(const void *a, const void *b)
{
    const len_idx *x = a, *y = b;
    return x->len != y->len ? x->len - y->len : x->idx - y->idx;
}

static int cmd_embed(const char *dir, char **texts, int n, const cli_opts *o)
{
    const sherl_backend *be = sherl_backend_cpu();
    wordpiece_tokenizer *tok = NULL;
    bert_model *m = NULL;
    tok_encoding *encs = NULL;
    float *emb = NULL, *out = NULL;
    len_idx *order = NULL;
    int rc = 1;
    sherl_status st = wordpiece_load(&tok, dir);
    if (st.code)
        goto done;
    st = bert_load(&m, dir, be);
    if (st.code)
        goto done;
    int D = m->cfg.hidden_size;
    pool_mode pooling = folder_pooling(dir);
    if (o->pooling)
        pool_mode_parse(o->pooling, &pooling); /* validated when the options were read */
    int max_len = o->max_length > 0 ? o->max_length : sentence_max_length(dir);
    if (max_len <= 0)
        max_len = wordpiece_get_options(tok)->model_max_length;
    if (max_len > m->cfg.max_position_embeddings)
        max_len = m->cfg.max_position_embeddings;
    encs = calloc((size_t)n, sizeof *encs);
    order = calloc((size_t)n, sizeof *order);
    out = calloc((size_t)n * D, sizeof(float));
    emb = calloc((size_t)o->batch_size * D, sizeof(float));
    if (!encs || !order || !out || !emb) {
        st = sherl_errorf(SHERL_ENOMEM, "out of memory for %d texts", n);
        goto done;
    }
    int Tmax = 1;
    for (int i = 0; i < n; i++) {
        st = wordpiece_encode(tok, texts[i], NULL, max_len, &encs[i]);
        if (st.code) {
            st = sherl_errorf(st.code, "text %d: %s", i + 1, st.msg);
            goto done;
        }
        order[i] = (len_idx){i, encs[i].len};
        if (encs[i].len > Tmax)
            Tmax = encs[i].len;
    }
    /* Similar lengths together so padding costs little. */
    qsort(order, (size_t)n, sizeof *order, by_len);
    bert_workspace ws;
    st = bert_workspace_create(&ws, m, o->batch_size < n ? o->batch_size : n, Tmax);
    if (st.code)
        goto done;
    tok_encoding *chunk = malloc(sizeof(tok_encoding) * (size_t)o->batch_size);
    for (int s = 0; chunk && !st.code && s < n; s += o->batch_size) {
        int nb = n - s < o->batch_size ? n - s : o->batch_size;
        for (int k = 0; k < nb; k++)
            chunk[k] = encs[order[s + k].idx];
        bert_batch batch;
        st = bert_batch_from_encodings(&batch, chunk, nb, wordpiece_pad_id(tok));
        if (st.code)
            break;
        st = bert_sentence_embedding(m, &ws, &batch, pooling, emb);
        bert_batch_free(&batch);
        for (int k = 0; !st.code && k < nb; k++)
            memcpy(out + (size_t)order[s + k].idx * D, emb + (size_t)k * D, sizeof(float) * D);
    }
    free(chunk);
    bert_workspace_free(&ws);
    if (st.code)
        goto done;
    printf("[");
    for (int i = 0; i < n; i++) {
        printf(i ? ",\n [" : "[");
        for (int k = 0; k < D; k++)
            printf(k ? ", %.9g" : "%.9g", (double)out[(size_t)i * D + k]);
        printf("]");
    }
    printf("]\n");
    rc = 0;
done:
    if (rc)
        fail(st);
    for (int i = 0; encs && i < n; i++)
        tok_encoding_free(&encs[i]);
    free(encs), free(order), free(out), free(emb);
    bert_free(m);
    wordpiece_free(tok);
    return rc;
}

int main(int argc, char **argv)
{
    cli_opts o = {.max_length = 0, .pair = 0, .batch_size = 32, .threads = 0, .pooling = NULL};
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    o.threads = ncpu > 0 ? (int)ncpu : 1;
    const char *cmd = NULL, *dir = NULL;
    char **rest = calloc((size_t)argc + 1, sizeof(char *));
    int nrest = 0, only_positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_positional && a[0] == '-' && a[1]) {
            if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
                fputs(USAGE, stdout);
                free(rest);
                return 0;
            } else if (!strcmp(a, "--")) {
                only_positional = 1;
            } else if (!strcmp(a, "--resume")) {
                o.resume = 1;
            } else if (!strcmp(a, "--json")) {
                o.json = 1;
            } else if (!strcmp(a, "--stop-after")) {
                if (parse_int(a, i + 1 < argc ? argv[++i] : NULL, 1, 1 << 30, &o.stop_after))
                    return free(rest), 2;
            } else if (!strcmp(a, "--pair")) {
                o.pair = 1;
            } else if (!strcmp(a, "--max-length")) {
                if (parse_int(a, i + 1 < argc ? argv[++i] : NULL, 2, 1 << 20, &o.max_length))
                    return free(rest), 2;
            } else if (!strcmp(a, "--batch-size")) {
                if (parse_int(a, i + 1 < argc ? argv[++i] : NULL, 1, 4096, &o.batch_size))
                    return free(rest), 2;
            } else if (!strcmp(a, "--pooling")) {
                pool_mode pm;
                sherl_status pst = pool_mode_parse(i + 1 < argc ? argv[i + 1] : NULL, &pm);
                if (pst.code) {
                    fprintf(stderr, "sherl: --pooling: %s\n", pst.msg);
                    return free(rest), 2;
                }
                o.pooling = argv[++i];
            } else if (!strcmp(a, "--devices")) {
                o.devices = 1;
            } else if (!strcmp(a, "--threads")) {
                if (parse_int(a, i + 1 < argc ? argv[++i] : NULL, 1, 1024, &o.threads))
                    return free(rest), 2;
                o.threads_given = 1;
            } else {
                fprintf(stderr, "sherl: unknown option '%s' (see sherl --help)\n", a);
                return free(rest), 2;
            }
        } else if (!cmd) {
            cmd = a;
        } else if (!dir) {
            dir = a;
        } else {
            rest[nrest++] = argv[i];
        }
    }
    if (!cmd) {
        fputs(USAGE, stderr);
        return free(rest), 2;
    }
    if (strcmp(cmd, "inspect") && strcmp(cmd, "tokenize") && strcmp(cmd, "embed") &&
        strcmp(cmd, "train") && strcmp(cmd, "plan")) {
        fprintf(stderr,
                "sherl: unknown command '%s' (expected inspect, tokenize, embed, train or plan)\n",
                cmd);
        return free(rest), 2;
    }
    if (!strcmp(cmd, "train") || !strcmp(cmd, "plan")) {
        if (!dir) {
            fprintf(stderr, "sherl %s: missing JOB.json (see sherl --help)\n", cmd);
            return free(rest), 2;
        }
        if (nrest) {
            fprintf(stderr, "sherl %s: unexpected argument '%s'\n", cmd, rest[0]);
            return free(rest), 2;
        }
        cli_train_opts to = {o.resume, o.stop_after, o.threads_given ? o.threads : 0, o.json};
        if (!strcmp(cmd, "plan")) {
            free(rest);
            return cmd_plan(dir, &to);
        }
        if (sherl_backend_cpu()->performance_advice())
            fprintf(stderr, "sherl: note: %s\n", sherl_backend_cpu()->performance_advice());
        free(rest);
        return cmd_train(dir, &to);
    }
    if (o.devices) {
        if (strcmp(cmd, "inspect") || dir) {
            fprintf(stderr, "sherl: --devices goes with 'inspect' alone: sherl inspect --devices\n");
            return free(rest), 2;
        }
        free(rest);
        return cmd_devices();
    }
    if (!dir) {
        fprintf(stderr, "sherl %s: missing MODEL_DIR (see sherl --help)\n", cmd);
        return free(rest), 2;
    }
    sherl_backend_cpu()->set_threads(o.threads);
    if (!strcmp(cmd, "embed") && sherl_backend_cpu()->performance_advice())
        fprintf(stderr, "sherl: note: %s\n", sherl_backend_cpu()->performance_advice());
    int rc;
    if (!strcmp(cmd, "inspect")) {
        rc = cmd_inspect(dir);
    } else {
        int n;
        char **texts = collect_texts(nrest, rest, &n);
        if (n == 0) {
            fprintf(stderr, "sherl %s: no texts given (arguments or lines on stdin)\n", cmd);
            rc = 2;
        } else if (!texts) {
            fprintf(stderr, "sherl: out of memory reading texts\n");
            rc = 1;
        } else {
            rc = !strcmp(cmd, "tokenize") ? cmd_tokenize(dir, texts, n, &o)
                                          : cmd_embed(dir, texts, n, &o);
        }
        free_texts(texts, n);
    }
    free(rest);
    return rc;
}
