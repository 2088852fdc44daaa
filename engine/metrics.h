/* Evaluation metrics: accuracy and macro-F1 for classification, Pearson and Spearman
 * correlation for regression. Computed in double on the host. */
#ifndef SHERL_METRICS_H
#define SHERL_METRICS_H

#include <stdint.h>

/* Fraction of pred[i] == label[i]; 0 for n = 0. */
double metric_accuracy(const int32_t *pred, const int32_t *label, int n);
/* Mean over classes of F1 = 2PR / (P + R), over the classes that occur in label or pred (as
 * scikit-learn's macro average); a class with P + R = 0 counts 0. num_classes bounds the ids. */
double metric_macro_f1(const int32_t *pred, const int32_t *label, int n, int num_classes);
/* Pearson correlation; NaN when n < 2 or either side is constant. */
double metric_pearson(const float *x, const float *y, int n);
/* Spearman rank correlation (ties get their average rank); NaN as Pearson. */
double metric_spearman(const float *x, const float *y, int n);

#endif
