#include "metrics.h"

#include <math.h>
#include <stdlib.h>

double metric_accuracy(const int32_t *pred, const int32_t *label, int n)
{
    if (n <= 0)
        return 0.0;
    int ok = 0;
    for (int i = 0; i < n; i++)
        ok += pred[i] == label[i];
    return (double)ok / n;
}

double metric_macro_f1(const int32_t *pred, const int32_t *label, int n, int num_classes)
{
    if (n <= 0 || num_classes <= 0)
        return 0.0;
    /* per class: true positives, predicted count, actual count */
    int *tp = calloc((size_t)num_classes * 3, sizeof(int));
    if (!tp)
        return NAN;
    int *npred = tp + num_classes, *nlab = npred + num_classes;
    for (int i = 0; i < n; i++) {
        int p = pred[i], l = label[i];
        if (p >= 0 && p < num_classes)
            npred[p]++;
        if (l >= 0 && l < num_classes)
            nlab[l]++;
        if (p == l && p >= 0 && p < num_classes)
            tp[p]++;
    }
    double sum = 0.0;
    int classes = 0;
    for (int c = 0; c < num_classes; c++) {
        if (!npred[c] && !nlab[c])
            continue;
        classes++;
        double prec = npred[c] ? (double)tp[c] / npred[c] : 0.0;
        double rec = nlab[c] ? (double)tp[c] / nlab[c] : 0.0;
        sum += prec + rec > 0 ? 2 * prec * rec / (prec + rec) : 0.0;
    }
    free(tp);
    return classes ? sum / classes : 0.0;
}

static double pearson_d(const double *x, const double *y, int n)
{
    if (n < 2)
        return NAN;
    double mx = 0, my = 0;
    for (int i = 0; i < n; i++)
        mx += x[i], my += y[i];
    mx /= n, my /= n;
    double sxy = 0, sxx = 0, syy = 0;
    for (int i = 0; i < n; i++) {
        double dx = x[i] - mx, dy = y[i] - my;
        sxy += dx * dy, sxx += dx * dx, syy += dy * dy;
    }
    if (sxx <= 0 || syy <= 0)
        return NAN;
    return sxy / sqrt(sxx * syy);
}

double metric_pearson(const float *x, const float *y, int n)
{
    double *d = malloc(sizeof(double) * 2 * (size_t)(n > 0 ? n : 1));
    if (!d)
        return NAN;
    for (int i = 0; i < n; i++)
        d[i] = x[i], d[n + i] = y[i];
    double r = pearson_d(d, d + n, n);
    free(d);
    return r;
}

typedef struct {
    float v;
    int i;
} val_idx;

static int by_value(const void *a, const void *b)
{
    const val_idx *p = a, *q = b;
    return p->v < q->v ? -1 : p->v > q->v ? 1 : p->i - q->i;
}

/* 1-based ranks, ties averaged. */
static int ranks(const float *x, int n, double *r)
{
    val_idx *t = malloc(sizeof *t * (size_t)n);
    if (!t)
        return -1;
    for (int i = 0; i < n; i++)
        t[i] = (val_idx){x[i], i};
    qsort(t, (size_t)n, sizeof *t, by_value);
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && t[j + 1].v == t[i].v)
            j++;
        double avg = (i + j) / 2.0 + 1.0;
        for (int k = i; k <= j; k++)
            r[t[k].i] = avg;
        i = j + 1;
    }
    free(t);
    return 0;
}

double metric_spearman(const float *x, const float *y, int n)
{
    if (n < 2)
        return NAN;
    double *r = malloc(sizeof(double) * 2 * (size_t)n);
    if (!r || ranks(x, n, r) || ranks(y, n, r + n)) {
        free(r);
        return NAN;
    }
    double rho = pearson_d(r, r + n, n);
    free(r);
    return rho;
}
