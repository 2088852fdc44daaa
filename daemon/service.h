/* The RPC handlers (service.c) and Predict's engine side (predict.c). */
#ifndef SHERLD_SERVICE_H
#define SHERLD_SERVICE_H

#include <stddef.h>

#include "rpc.h"
#include "sherld.h"

/* The method table of sherl.v1.Sherl and grpc.health.v1.Health; ctx is the sherld. */
const rpc_method *service_methods(int *n);

typedef struct {
    size_t n, n_out;  /* texts, scores per text (labels, or 1 for regression) */
    float *scores;    /* [n, n_out]: probabilities, or the regression value */
    int *best;        /* [n]: argmax (classification) or -1 */
    char **labels;    /* [n_out] label names (classification), else NULL */
    size_t n_labels;
    char error[600];
} predict_result;

/* Runs a SUCCEEDED job's trained model on texts (texts_b: pairs, nb 0 or n). Returns a gRPC
 * status code; on error out->error says why. */
int predict_run(sherld *d, const job_record *r, const char *const *texts, size_t n,
                const char *const *texts_b, size_t nb, predict_result *out);
void predict_result_free(predict_result *p);

#endif
