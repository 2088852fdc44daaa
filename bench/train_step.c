/* bench_train_step: samples/s of one whole training step (forward, backward, gradient clipping,
 * AdamW) in the engine, with where the time goes. Prints numbers; never fails on a timing.
 *
 *   bench_train_step MODEL_DIR [--method sherl] [--batch 32] [--seq 128] [--iters 5]
 *                    [--threads N] [--late-layers 1]
 * The batch is random token ids with full attention masks and random labels of 3 classes; MTSA
 * dropout is 0 so the step is the same as bench/train_step_torch.py's. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_util.h"
#include "bert.h"
#include "optim.h"
#include "sherl_model.h"

static int fail(sherl_status st)
{
    fprintf(stderr, "bench_train_step: %s\n", st.msg);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(argc < 2 ? stderr : stdout,
                "usage: bench_train_step MODEL_DIR [--method sherl|full|late|linear] [--batch 32] "
                "[--seq 128] [--iters 5] [--threads N] [--late-layers 1]\n");
        return argc < 2 ? 2 : 0;
    }
    int B = 32, T = 128, iters = 5, threads = (int)sysconf(_SC_NPROCESSORS_ONLN), k = 1;
    const char *method_name = "sherl";
    bench_int_opt opts[] = {{"--batch", &B}, {"--seq", &T}, {"--iters", &iters},
                            {"--threads", &threads}, {"--late-layers", &k}};
    const char *const str_names[] = {"--method"};
    if (bench_parse("bench_train_step", argc, argv, 2, opts, 5, str_names, &method_name, 1))
        return 2;
    const sherl_backend *be = sherl_backend_cpu();
    be->set_threads(threads);
    sherl_options o;
    sherl_options_default(&o);
    sherl_status st = train_method_parse(method_name, &o.method);
    if (st.code)
        return fail(st);
    o.late_layers = k, o.dropout = 0.0f, o.num_labels = 3;
    bert_model *bb;
    sherl_model *m;
    sherl_step s;
    if ((st = bert_load(&bb, argv[1], be)).code || (st = sherl_model_create(&m, bb, &o)).code ||
        (st = sherl_step_create(&s, m, B, T)).code)
        return fail(st);
    bert_batch batch = {B, T, malloc(sizeof(int32_t) * B * T), calloc(B * T, sizeof(int32_t)),
                        malloc(sizeof(int32_t) * B * T)};
    int32_t *labels = malloc(sizeof(int32_t) * B);
    uint64_t r = 42;
    for (int i = 0; i < B * T; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        batch.input_ids[i] = 1000 + (int32_t)((r >> 33) % (uint64_t)(bb->cfg.vocab_size - 1000));
        batch.attention_mask[i] = 1;
    }
    for (int b = 0; b < B; b++)
        labels[b] = b % 3;
    double *t = malloc(sizeof(double) * iters), opt_s = 0, loss = 0;
    for (int it = -1; it < iters; it++) { /* it = -1: warm-up, not timed */
        if (it == 0) {
            s.profile = 1;
            memset(s.phase_s, 0, sizeof s.phase_s);
        }
        double t0 = bench_now();
        param_set_zero_grad(&m->ps);
        if ((st = sherl_forward(m, &s, &batch, labels, NULL, 1, (uint64_t)it, &loss, NULL)).code)
            return fail(st);
        sherl_backward(m, &s, (uint64_t)it);
        double t1 = bench_now();
        clip_grad_norm(&m->ps, 1.0);
        param_set_adamw(&m->ps, 1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, it + 2);
        double t2 = bench_now();
        if (it >= 0)
            t[it] = t2 - t0, opt_s += t2 - t1;
    }
    double total = 0;
    for (int i = 0; i < iters; i++)
        total += t[i];
    double med = bench_median(t, iters);
    char desc[256];
    be->describe(desc, sizeof desc);
    fprintf(stderr, "bench_train_step: %s\n", desc);
    if (be->performance_advice())
        fprintf(stderr, "bench_train_step: note: %s\n", be->performance_advice());
    long long trainable = 0;
    for (int i = 0; i < m->ps.n; i++)
        trainable += (long long)m->ps.items[i].numel;
    printf("sherl   train_step method=%s B=%d T=%d threads=%d: median %.4f s/step (min %.4f), "
           "%.2f samples/s, loss %.4f, %lld trainable\n",
           method_name, B, T, threads, med, t[0], B / med, loss, trainable);
    printf("  where the time goes (mean over %d steps, profiled with a sync per phase):\n", iters);
    for (int p = 0; p < SHERL_PHASES; p++)
        if (s.phase_s[p] > 0)
            printf("    %-30s %7.1f ms  %5.1f%%\n", SHERL_PHASE_NAMES[p], 1e3 * s.phase_s[p] / iters,
                   100 * s.phase_s[p] / total);
    printf("    %-30s %7.1f ms  %5.1f%%\n", "clip + AdamW", 1e3 * opt_s / iters, 100 * opt_s / total);
    free(t), free(labels);
    bert_batch_free(&batch);
    sherl_step_free(&s, m);
    sherl_model_free(m);
    bert_free(bb);
    return 0;
}
