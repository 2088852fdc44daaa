/* bench_forward: tokens/s of the frozen encoder forward (all hidden states kept, as the SHERL
 * early route needs them). Prints numbers; never fails on a timing.
 *
 *   bench_forward MODEL_DIR [--batch 32] [--seq 128] [--iters 5] [--threads N] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "bert.h"

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(argc < 2 ? stderr : stdout,
                "usage: bench_forward MODEL_DIR [--batch 32] [--seq 128] [--iters 5] "
                "[--threads N]\n");
        return argc < 2 ? 2 : 0;
    }
    const char *dir = argv[1];
    int B = 32, T = 128, iters = 5, threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    bench_int_opt opts[] = {{"--batch", &B}, {"--seq", &T}, {"--iters", &iters},
                            {"--threads", &threads}};
    if (bench_parse("bench_forward", argc, argv, 2, opts, 4, NULL, NULL, 0))
        return 2;
    const sherl_backend *be = sherl_backend_cpu();
    be->set_threads(threads);
    bert_model *m;
    sherl_status st = bert_load(&m, dir, be);
    if (st.code) {
        fprintf(stderr, "bench_forward: %s\n", st.msg);
        return 1;
    }
    int L = m->cfg.num_hidden_layers, D = m->cfg.hidden_size;
    bert_batch batch = {B, T, malloc(sizeof(int32_t) * B * T), calloc(B * T, sizeof(int32_t)),
                        malloc(sizeof(int32_t) * B * T)};
    uint64_t s = 42;
    for (int k = 0; k < B * T; k++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        batch.input_ids[k] = 1000 + (int32_t)((s >> 33) % (uint64_t)(m->cfg.vocab_size - 1000));
        batch.attention_mask[k] = 1;
    }
    bert_workspace ws;
    st = bert_workspace_create(&ws, m, B, T);
    if (st.code) {
        fprintf(stderr, "bench_forward: %s\n", st.msg);
        return 1;
    }
    float **hidden = calloc(L + 1, sizeof(float *));
    for (int i = 0; i <= L; i++)
        hidden[i] = be->alloc(sizeof(float) * B * T * D);
    double *t = malloc(sizeof(double) * iters);
    bert_forward(m, &ws, &batch, hidden); /* warm-up: page in weights, spin up threads */
    for (int it = 0; it < iters; it++) {
        double t0 = bench_now();
        st = bert_forward(m, &ws, &batch, hidden);
        t[it] = bench_now() - t0;
        if (st.code) {
            fprintf(stderr, "bench_forward: %s\n", st.msg);
            return 1;
        }
    }
    double med = bench_median(t, iters);
    char desc[256];
    be->describe(desc, sizeof desc);
    fprintf(stderr, "bench_forward: %s\n", desc);
    if (be->performance_advice())
        fprintf(stderr, "bench_forward: note: %s\n", be->performance_advice());
    printf("sherl   forward B=%d T=%d threads=%d: median %.4f s/batch (min %.4f), %.0f tokens/s\n",
           B, T, threads, med, t[0], B * T / med);
    for (int i = 0; i <= L; i++)
        be->free(hidden[i]);
    free(hidden), free(t);
    bert_workspace_free(&ws);
    bert_batch_free(&batch);
    bert_free(m);
    return 0;
}
