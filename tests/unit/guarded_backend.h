/* A CPU backend whose memory the host cannot touch outside the backend's own calls: engine
 * code that skips copy_to_device / copy_to_host faults (see guarded_backend.c). Single-threaded
 * callers only. */
#ifndef SHERL_GUARDED_BACKEND_H
#define SHERL_GUARDED_BACKEND_H

#include "kernels.h"

const sherl_backend *guarded_backend(void);

/* It captures graphs as a device does (kernels.h: capture_begin ... graph_launch), recording
 * the ops and running them again at each launch; a call no device can capture aborts. The
 * launches of graphs since the process started: */
unsigned long long guarded_backend_graph_launches(void);

/* Every call through the guarded backend is counted by op (copies and zeroing included): on a
 * device each would be a launch or a copy, so the counts of one training step say how many
 * launches the engine makes, on a machine without a GPU. */
typedef struct {
    const char *op;
    unsigned long long calls;
} guarded_op_calls;

void guarded_backend_reset_calls(void);
/* The ops called since the last reset, most calls first; returns how many (at most max). */
int guarded_backend_calls(guarded_op_calls *out, int max);

#endif
