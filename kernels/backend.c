#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#ifndef SHERL_HAVE_CUDA
/* Builds without nvcc have no CUDA backend at all. */
const sherl_backend *sherl_backend_cuda(void) { return NULL; }

int sherl_cuda_devices(sherl_device_info *out, int max, char *why, size_t why_len)
{
    (void)out, (void)max;
    if (why && why_len)
        snprintf(why, why_len, "this build has no CUDA backend (nvcc was not found)");
    return 0;
}
#endif

int sherl_cuda_absent(char *why, size_t len)
{
    const char *off = getenv("SHERL_CUDA_DISABLE");
    if (off && *off && strcmp(off, "0")) {
        snprintf(why, len, "the CUDA backend is disabled: SHERL_CUDA_DISABLE=%s", off);
        return 0;
    }
    char reason[256] = "";
    int n = sherl_cuda_devices(NULL, 0, reason, sizeof reason);
    if (n == 0) {
        snprintf(why, len, "%s", reason[0] ? reason : "no CUDA device");
        return 0;
    }
    snprintf(why, len, "%d CUDA device(s) present, but none this build can use (its machine code "
                       "is for sm_90 and later)",
             n);
    return -1;
}

const sherl_backend *sherl_backend_by_name(const char *name)
{
    if (!name)
        return NULL;
    if (strcmp(name, "cpu") == 0)
        return sherl_backend_cpu();
    if (strcmp(name, "cuda") == 0)
        return sherl_backend_cuda();
    if (strcmp(name, "auto") == 0) {
        const sherl_backend *be = sherl_backend_cuda();
        return be ? be : sherl_backend_cpu();
    }
    return NULL;
}
