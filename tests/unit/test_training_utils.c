/* Metrics, learning-rate schedules, gradient clipping and the feed-forward chunk policy against
 * hand-computed values. */
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bert.h"
#include "metrics.h"
#include "optim.h"

#define NEAR(a, b, tol) cr_expect(fabs((a) - (b)) <= (tol), "%s = %.9g, expected %.9g", #a, (double)(a), (double)(b))

Test(metrics, accuracy_and_macro_f1)
{
    int32_t pred[4] = {0, 1, 2, 1}, label[4] = {0, 1, 1, 1};
    NEAR(metric_accuracy(pred, label, 4), 0.75, 1e-12);
    /* class 0: F1 1; class 1: P 1, R 2/3, F1 0.8; class 2 (predicted, never true): 0 */
    NEAR(metric_macro_f1(pred, label, 4, 3), 0.6, 1e-12);
    /* a class that occurs nowhere does not count */
    NEAR(metric_macro_f1(pred, label, 4, 10), 0.6, 1e-12);
    NEAR(metric_accuracy(pred, label, 0), 0.0, 0);
}

Test(metrics, pearson_and_spearman)
{
    float x[4] = {1, 2, 3, 4}, y[4] = {2, 4, 6, 8}, z[4] = {4, 3, 2, 1};
    NEAR(metric_pearson(x, y, 4), 1.0, 1e-12);
    NEAR(metric_pearson(x, z, 4), -1.0, 1e-12);
    float a[3] = {1, 2, 3}, b[3] = {1, 3, 2};
    NEAR(metric_pearson(a, b, 3), 0.5, 1e-12);
    /* ties: ranks of x2 are 1, 2.5, 2.5, 4 -> r = 4.5 / sqrt(4.5 * 5) */
    float x2[4] = {1, 2, 2, 3}, y2[4] = {10, 20, 30, 40};
    NEAR(metric_spearman(x2, y2, 4), 4.5 / sqrt(22.5), 1e-12);
    /* monotone but not linear: Spearman 1, Pearson below 1 */
    float e[5] = {1, 2, 3, 4, 5}, f[5] = {1, 4, 9, 16, 1000};
    NEAR(metric_spearman(e, f, 5), 1.0, 1e-12);
    cr_expect(metric_pearson(e, f, 5) < 0.9);
    float c[3] = {2, 2, 2};
    cr_expect(isnan(metric_pearson(a, c, 3)) && isnan(metric_spearman(c, a, 3)));
    cr_expect(isnan(metric_pearson(a, b, 1)));
}

Test(optim, schedules_match_hugging_face_formulas)
{
    cr_expect(lr_warmup_steps(0.06f, 100) == 6);
    cr_expect(lr_warmup_steps(0.06f, 101) == 7); /* ceil(6.06) */
    cr_expect(lr_warmup_steps(0.0f, 100) == 0);
    NEAR(lr_at(SCHEDULE_LINEAR, 1.0, 10, 100, 0), 0.0, 1e-12);
    NEAR(lr_at(SCHEDULE_LINEAR, 1.0, 10, 100, 5), 0.5, 1e-12);
    NEAR(lr_at(SCHEDULE_LINEAR, 1.0, 10, 100, 10), 1.0, 1e-12);
    NEAR(lr_at(SCHEDULE_LINEAR, 1.0, 10, 100, 55), 0.5, 1e-12);
    NEAR(lr_at(SCHEDULE_LINEAR, 1.0, 10, 100, 100), 0.0, 1e-12);
    NEAR(lr_at(SCHEDULE_LINEAR, 1.0, 10, 100, 120), 0.0, 1e-12);
    NEAR(lr_at(SCHEDULE_COSINE, 2.0, 10, 100, 55), 1.0, 1e-12);
    NEAR(lr_at(SCHEDULE_COSINE, 2.0, 10, 100, 10), 2.0, 1e-12);
    NEAR(lr_at(SCHEDULE_COSINE, 2.0, 10, 100, 100), 0.0, 1e-12);
    NEAR(lr_at(SCHEDULE_CONSTANT, 3.0, 10, 100, 5), 1.5, 1e-12);
    NEAR(lr_at(SCHEDULE_CONSTANT, 3.0, 10, 100, 77), 3.0, 1e-12);
    NEAR(lr_at(SCHEDULE_LINEAR, 1.0, 0, 4, 1), 0.75, 1e-12); /* no warmup */
}

Test(optim, clip_grad_norm_scales_to_max_norm)
{
    const sherl_backend *be = sherl_backend_cpu();
    param_set ps;
    param_set_init(&ps, be);
    cr_assert(param_set_add(&ps, "a", 2, 0, 1) == 0);
    cr_assert(param_set_add(&ps, "b", 1, 2, 0) == 1);
    cr_assert(param_set_alloc(&ps).code == SHERL_OK);
    float ga[2] = {3, 0}, gb[2] = {0, 4}; /* global norm 5 */
    be->copy_to_device(ps.items[0].grad, ga, sizeof ga);
    be->copy_to_device(ps.items[1].grad, gb, sizeof gb);
    NEAR(clip_grad_norm(&ps, 10.0), 5.0, 1e-9); /* below: untouched */
    NEAR(param_set_grad_norm(&ps), 5.0, 1e-9);
    NEAR(clip_grad_norm(&ps, 1.0), 5.0, 1e-9);
    NEAR(param_set_grad_norm(&ps), 1.0 * 5.0 / (5.0 + 1e-6), 1e-6);
    be->copy_to_host(ga, ps.items[0].grad, sizeof ga);
    NEAR(ga[0], 3.0 / (5.0 + 1e-6), 1e-6);
    NEAR(clip_grad_norm(&ps, 0.0), param_set_grad_norm(&ps), 1e-12); /* 0: off */
    param_set_free(&ps);
}

/* The arenas hold the tensors with weight decay first, then the others, each group in the order
 * added and padded to 16 floats, so param_set_adamw is one backend call per group: its result
 * must be each tensor's own AdamW step (hand-computed below), with the padding between tensors
 * still zero after it. */
Test(optim, adamw_over_the_two_groups_is_each_tensors_own_step)
{
    const sherl_backend *be = sherl_backend_cpu();
    param_set ps;
    param_set_init(&ps, be);
    /* decay flags 1, 0, 1, 0, 1 with odd sizes, so every tensor has padding after it */
    const int64_t d0[5] = {3, 5, 2, 17, 1}, d1[5] = {2, 0, 3, 0, 0};
    for (int i = 0; i < 5; i++) {
        char name[8];
        snprintf(name, sizeof name, "t%d", i);
        cr_assert(param_set_add(&ps, name, d0[i], d1[i], i % 2 == 0 ? 7 : 0) == i);
    }
    /* known before the arenas exist: group distances; none across groups */
    cr_expect_eq(param_set_distance(&ps, 0, 2), 16);
    cr_expect_eq(param_set_distance(&ps, 0, 4), 32);
    cr_expect_eq(param_set_distance(&ps, 1, 3), 16);
    cr_expect_eq(param_set_distance(&ps, 2, 0), -16);
    cr_expect_eq(param_set_distance(&ps, 0, 1), LLONG_MIN);
    cr_assert(param_set_alloc(&ps).code == SHERL_OK);
    const size_t want_off[5] = {0, 48, 16, 64, 32};
    for (int i = 0; i < 5; i++)
        cr_expect_eq(ps.items[i].offset, want_off[i], "t%d at %zu, expected %zu", i,
                     ps.items[i].offset, want_off[i]);
    cr_expect_eq(ps.decay_total, 48);
    cr_expect_eq(ps.total, 96);
    /* every tensor: data, grad, m and v distinct per element */
    float *h = calloc(ps.total, sizeof(float));
    cr_assert(h);
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < 5; i++) {
            sherl_param *p = &ps.items[i];
            float *dst = k == 0 ? p->data : k == 1 ? p->grad : k == 2 ? p->m : p->v;
            for (size_t e = 0; e < p->numel; e++)
                h[e] = (float)(0.25 * (k + 1) + 0.01 * (double)(i * 20 + (int)e)) *
                       (k == 1 && e % 2 ? -1.0f : 1.0f);
            be->copy_to_device(dst, h, p->numel * sizeof(float));
        }
    }
    const float lr = 0.01f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f;
    const int step = 3;
    param_set_adamw(&ps, lr, b1, b2, eps, wd, step);
    float *data = calloc(ps.total, sizeof(float)), *m = calloc(ps.total, sizeof(float)),
          *v = calloc(ps.total, sizeof(float));
    cr_assert(data && m && v);
    be->copy_to_host(data, ps.data, ps.total * sizeof(float));
    be->copy_to_host(m, ps.m, ps.total * sizeof(float));
    be->copy_to_host(v, ps.v, ps.total * sizeof(float));
    size_t seen = 0;
    for (int i = 0; i < 5; i++) {
        const sherl_param *p = &ps.items[i];
        double decay = i % 2 == 0 ? wd : 0.0;
        for (size_t e = 0; e < p->numel; e++) {
            double p0 = 0.25 + 0.01 * (i * 20 + (int)e), g = (0.5 + 0.01 * (i * 20 + (int)e)) *
                                                          (e % 2 ? -1.0 : 1.0);
            double m0 = 0.75 + 0.01 * (i * 20 + (int)e), v0 = 1.0 + 0.01 * (i * 20 + (int)e);
            double m1 = b1 * m0 + (1 - b1) * g, v1 = b2 * v0 + (1 - b2) * g * g;
            double mh = m1 / (1 - pow(b1, step)), vh = v1 / (1 - pow(b2, step));
            double want = p0 * (1 - lr * decay) - lr * mh / (sqrt(vh) + eps);
            size_t at = p->offset + e;
            cr_expect(fabs(data[at] - want) <= 1e-6 * fabs(want) + 1e-7,
                      "t%d[%zu] = %.9g, expected %.9g", i, e, data[at], want);
            cr_expect(fabs(m[at] - m1) <= 1e-6 * fabs(m1), "m of t%d[%zu]", i, e);
            cr_expect(fabs(v[at] - v1) <= 1e-6 * fabs(v1), "v of t%d[%zu]", i, e);
        }
        seen += p->numel;
        /* the padding after the tensor */
        for (size_t at = p->offset + p->numel; at < p->offset + ((p->numel + 15) & ~(size_t)15);
             at++)
            cr_expect(data[at] == 0.0f && m[at] == 0.0f && v[at] == 0.0f,
                      "padding at %zu after t%d: %g %g %g", at, i, data[at], m[at], v[at]);
    }
    cr_expect_eq(seen, 6 + 5 + 6 + 17 + 1);
    free(h), free(data), free(m), free(v);
    param_set_free(&ps);
}

/* The feed-forward chunk: half a hidden state's floats per [rows, F] buffer on the CPU; on a
 * device at least BERT_FFN_DEVICE_ROWS (8192) rows, never more than the batch, and the CPU's
 * when that is larger. BERT-base widths: D = 768, F = 3072, so N * D / (2F) = N / 8. */
Test(bert, ffn_chunk_cpu_and_device)
{
    hf_config c;
    memset(&c, 0, sizeof c);
    c.hidden_size = 768, c.intermediate_size = 3072;
    cr_expect_eq(bert_ffn_chunk(&c, 8192, 0), 1024);   /* 64 x 128 on the CPU */
    cr_expect_eq(bert_ffn_chunk(&c, 8192, 1), 8192);   /* ... on a device: the whole batch */
    cr_expect_eq(bert_ffn_chunk(&c, 300, 1), 300);     /* never more than the batch */
    cr_expect_eq(bert_ffn_chunk(&c, 131072, 1), 16384); /* the CPU's, when it is larger */
    cr_expect_eq(bert_ffn_chunk(&c, 5, 0), 1);         /* at least one row */
    bert_set_ffn_device_rows(2048);
    cr_expect_eq(bert_ffn_chunk(&c, 8192, 1), 2048);
    bert_set_ffn_device_rows(1); /* the CPU's chunks on a device too */
    cr_expect_eq(bert_ffn_chunk(&c, 8192, 1), 1024);
    bert_set_ffn_device_rows(0); /* back to the default */
    cr_expect_eq(bert_ffn_chunk(&c, 8192, 1), BERT_FFN_DEVICE_ROWS);
}

/* A layout keeps its feed-forward rows, and its passes never take more: a layout made with the
 * CPU's chunks on a device (--ffn-rows 1: 1024 rows at 64 x 128) and the knob back at 8192 after
 * it still gets 1024-row passes; a smaller batch's own chunk stands. */
Test(bert, ffn_pass_rows_stay_within_the_layout)
{
    hf_config c;
    memset(&c, 0, sizeof c);
    c.hidden_size = 768, c.intermediate_size = 3072, c.num_attention_heads = 12;
    bert_set_ffn_device_rows(1);
    sherl_arena ar;
    arena_measure(&ar);
    bert_layer_acts a;
    bert_layer_grad_ws g;
    bert_layer_scratch_layout(&a, &ar, &c, 64, 128, 1);
    bert_layer_grad_ws_layout(&g, &ar, &c, 64, 128, 1);
    bert_set_ffn_device_rows(0);
    cr_expect_eq(a.ffn_rows, 1024);
    cr_expect_eq(g.ffn_rows, 1024);
    cr_expect_eq(bert_ffn_chunk(&c, 8192, 1), 8192);
    cr_expect_eq(bert_ffn_pass_rows(&c, 8192, 1, a.ffn_rows), 1024, "past the layout's buffers");
    cr_expect_eq(bert_ffn_pass_rows(&c, 600, 1, a.ffn_rows), 600, "a 600-token batch whole");
    cr_expect_eq(bert_ffn_pass_rows(&c, 8192, 1, 0), 8192, "no layout, no bound");
    bert_layer_acts b;
    bert_layer_scratch_layout(&b, &ar, &c, 64, 128, 1);
    cr_expect_eq(b.ffn_rows, 8192, "a layout made after the knob takes its value");
}

/* Attention's sequences a pass, from a forward-only layer's layout at BERT-base 64 x 128: on the
 * CPU the probabilities take half a hidden state (64 * 128 * 768 / 2 / (12 * 128 * 128) = 16);
 * on a device as many as fit in one [8192, 3072] feed-forward buffer with their Q|K|V and
 * probabilities (25165824 / (3 * 128 * 768 + 12 * 128 * 128) = 51.2). */
Test(bert, attention_sequences_cpu_and_device)
{
    hf_config c;
    memset(&c, 0, sizeof c);
    c.hidden_size = 768, c.intermediate_size = 3072, c.num_attention_heads = 12;
    int want[2] = {16, 51};
    for (int device = 0; device < 2; device++) {
        sherl_arena ar;
        arena_measure(&ar);
        bert_layer_acts a;
        bert_layer_scratch_layout(&a, &ar, &c, 64, 128, device);
        cr_expect_eq(bert_attn_seqs(&a, 12, 64, 128), want[device], "device %d: %d sequences",
                     device, bert_attn_seqs(&a, 12, 64, 128));
    }
}
