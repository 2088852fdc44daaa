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
    double seconds; /* timed_backend only: the calls' time, synchronised on both sides */
} guarded_op_calls;

void guarded_backend_reset_calls(void);
/* The ops called since the last reset, most calls first; returns how many (at most max). */
int guarded_backend_calls(guarded_op_calls *out, int max);

/* The same wrappers around any backend, timing instead of guarding: each call synchronises
 * `inner` before and after and charges the time between to its op (guarded_backend_calls then
 * gives seconds too). Memory, copies and errors are inner's; no graphs. A profile by op of what
 * a step spends on a device, at the cost of a synchronisation per call (whose own time
 * timed_backend_sync_seconds measures). One inner backend a process (NULL when asked for a
 * second), and not together with guarded_backend. */
const sherl_backend *timed_backend(const sherl_backend *inner);
double timed_backend_sync_seconds(void);

#endif
