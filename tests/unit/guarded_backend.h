/* A CPU backend whose memory the host cannot touch outside the backend's own calls: engine
 * code that skips copy_to_device / copy_to_host faults (see guarded_backend.c). Single-threaded
 * callers only. */
#ifndef SHERL_GUARDED_BACKEND_H
#define SHERL_GUARDED_BACKEND_H

#include "kernels.h"

const sherl_backend *guarded_backend(void);

#endif
